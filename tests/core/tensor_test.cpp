#include <gtest/gtest.h>

#include "core/tensor.h"

using namespace llm;

TEST(Tensor, ViewsShareStorage) {
  Tensor t = Tensor::zeros({4, 6});
  Tensor v = t.view({2, -1});
  EXPECT_EQ(v.shape(), (Shape{2, 12}));
  Tensor s = t.slice(0, 1, 2);
  EXPECT_TRUE(s.is_contiguous());
  s.data<float>()[0] = 5.0f;
  EXPECT_EQ(t.data<float>()[6], 5.0f);
  Tensor c = t.slice(1, 2, 3);
  EXPECT_FALSE(c.is_contiguous());
  EXPECT_EQ(c.data<float>() - t.data<float>(), 2);
  Tensor f = t.flat(10, 4);
  f.fill(1.0f);
  EXPECT_EQ(t.data<float>()[13], 1.0f);
  EXPECT_EQ(t.data<float>()[14], 0.0f);
}

TEST(Tensor, ErrorsNameTheProblem) {
  Tensor t = Tensor::zeros({3, 5});
  try {
    t.view({4, 4});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[3, 5]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(t.slice(1, 4, 2), Error);
  EXPECT_THROW(t.data<int32_t>(), Error);
  try {
    expect_shape(t, {3, 6}, "layer.w");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer.w"), std::string::npos);
  }
}

TEST(Tensor, AlignedAndDtypes) {
  for (DType d : {DType::f32, DType::bf16, DType::f16, DType::i32, DType::i64, DType::u16, DType::u8}) {
    Tensor t = Tensor::zeros({7, 3}, d);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 64, 0u);
    EXPECT_EQ(t.nbytes(), 21 * dtype_size(d));
  }
}

TEST(DType, HalfConversionsRoundTrip) {
  for (float f : {0.0f, 1.0f, -2.5f, 3.140625f, 65504.0f, 1e-3f}) {
    EXPECT_EQ(bf16_to_f32(f32_to_bf16(f)), bf16_to_f32(f32_to_bf16(bf16_to_f32(f32_to_bf16(f)))));
    EXPECT_NEAR(bf16_to_f32(f32_to_bf16(f)), f, std::abs(f) * 1.0f / 128);
    EXPECT_NEAR(f16_to_f32(f32_to_f16(f)), f, std::abs(f) * 1.0f / 1024);
  }
  // round to nearest even: 1 + 2^-8 is halfway between two bf16 values -> rounds to 1
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
}
