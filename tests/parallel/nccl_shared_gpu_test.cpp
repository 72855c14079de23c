// LLM_NCCL_SHARED_GPU's rules (comm/nccl_shared_gpu.h): the setting's values, and the NCCL host
// id that makes each rank sharing a GPU its own NCCL host.
#include "comm/nccl_shared_gpu.h"

#include <gtest/gtest.h>

#include <set>

#include "core/error.h"

namespace {

TEST(NcclSharedGpu, TheSettingIsOneOrZero) {
  EXPECT_FALSE(llm::nccl_shared_gpu_setting(nullptr));
  EXPECT_FALSE(llm::nccl_shared_gpu_setting(""));
  EXPECT_FALSE(llm::nccl_shared_gpu_setting("0"));
  EXPECT_TRUE(llm::nccl_shared_gpu_setting("1"));
  for (const char* bad : {"yes", "2", "true", " 1"}) {
    try {
      llm::nccl_shared_gpu_setting(bad);
      ADD_FAILURE() << "'" << bad << "' accepted";
    } catch (const llm::Error& e) {
      EXPECT_NE(std::string(e.what()).find("LLM_NCCL_SHARED_GPU='" + std::string(bad) + "'"), std::string::npos)
          << e.what();
    }
  }
}

TEST(NcclSharedGpu, EachRankIsAHostOfItsOwnUnlessTheUserNamedOne) {
  // Off: NCCL's own host id (one per machine) stays, so ranks sharing a GPU are refused.
  EXPECT_FALSE(llm::nccl_shared_gpu_host_id(false, nullptr, "node7", 3).has_value());
  // The user's NCCL_HOSTID wins.
  EXPECT_FALSE(llm::nccl_shared_gpu_host_id(true, "mine", "node7", 3).has_value());
  // On: distinct ids for the ranks of one machine, and for the same rank number on two machines.
  std::set<std::string> ids;
  for (const char* host : {"node7", "node8"})
    for (int rank = 0; rank < 64; ++rank) {
      const auto id = llm::nccl_shared_gpu_host_id(true, rank % 2 ? "" : nullptr, host, rank);
      ASSERT_TRUE(id.has_value());
      EXPECT_EQ(*id, std::string(host) + ":llm-rank-" + std::to_string(rank));
      ids.insert(*id);
    }
  EXPECT_EQ(ids.size(), 128u);
}

}  // namespace
