// Safetensors: bit-exact round trips for every dtype, hand-written files per the specification,
// strict rejection of corrupt headers (each error names the file), and atomic writes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>

#include "io/safetensors.h"
#include "support/scratch_dir.h"

using namespace llm;
namespace fs = std::filesystem;

namespace {

class ScratchDir : public llm::testing::ScratchDir {
 public:
  ScratchDir() : llm::testing::ScratchDir("llm-safetensors-test") {}
};

// A tensor of random bytes: every bit pattern (NaN payloads, denormals) must survive.
Tensor random_tensor(const Shape& shape, DType dtype, uint32_t seed) {
  Tensor t = Tensor::empty(shape, dtype);
  std::mt19937 rng(seed);
  auto* p = static_cast<unsigned char*>(t.raw());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<unsigned char>(rng());
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
  return s;
}

// A file built by hand: length prefix, header text as given, then `buffer`.
std::string st_bytes(const std::string& header, const std::string& buffer) { return le64(header.size()) + header + buffer; }

// Opening `bytes` must fail with a ConfigError naming the file and containing every `parts`.
void expect_rejected(const ScratchDir& dir, const std::string& bytes, std::initializer_list<std::string> parts) {
  static int n = 0;
  const std::string path = dir / ("bad" + std::to_string(n++) + ".safetensors");
  write_file(path, bytes);
  try {
    SafetensorsFile f(path);
    ADD_FAILURE() << "accepted a corrupt file; expected an error mentioning " << *parts.begin();
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

}  // namespace

TEST(Safetensors, RoundTripEveryDtypeBitExactWithMetadata) {
  ScratchDir dir;
  const std::string path = dir / "all.safetensors";
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"f32", random_tensor({3, 5}, DType::f32, 1)},
      {"bf16", random_tensor({7}, DType::bf16, 2)},
      {"f16", random_tensor({2, 3, 4}, DType::f16, 3)},
      {"i32", random_tensor({4, 1}, DType::i32, 4)},
      {"i64", random_tensor({3}, DType::i64, 5)},
      {"u8", random_tensor({13}, DType::u8, 6)},  // odd sizes: later tensors are unaligned
      {"u16", random_tensor({5}, DType::u16, 7)},
      {"scalar", random_tensor({}, DType::f32, 8)},
      {"empty", Tensor::empty({0, 4}, DType::f32)},
      {"z/last \"quoted\" \xc3\xa9", random_tensor({2, 2}, DType::f32, 9)},
  };
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "line\nbreak \"q\" \xe2\x82\xac"}};
  write_safetensors(path, tensors, meta);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"all.safetensors"});  // no temporary left

  // The header length is a multiple of 8 and the buffer is exactly the tensors' bytes.
  const std::string bytes = read_file(path);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes[8], '{');
  size_t total = 0;
  for (const auto& [name, t] : tensors) total += t.nbytes();
  EXPECT_EQ(bytes.size(), 8 + n + total);

  SafetensorsFile f(path);
  EXPECT_EQ(f.metadata(), meta);
  EXPECT_EQ(f.buffer_size(), total);
  ASSERT_EQ(f.names().size(), tensors.size());
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    EXPECT_EQ(f.names()[i], name);  // offset order = the order written
    const SafetensorsInfo& in = f.info(name);
    EXPECT_EQ(in.dtype, safetensors_dtype_name(t.dtype()));
    EXPECT_EQ(in.shape, t.shape());
    EXPECT_EQ(in.begin, offset);
    EXPECT_EQ(in.nbytes(), t.nbytes());
    offset += t.nbytes();
    EXPECT_TRUE(same_bytes(f.read(name), t)) << name;
  }
  EXPECT_FALSE(f.contains("nope"));
  EXPECT_THROW(f.info("nope"), ConfigError);

  // Without metadata there is no "__metadata__" entry.
  write_safetensors(path, {{"x", tensors[0].second}});
  SafetensorsFile g(path);
  EXPECT_TRUE(g.metadata().empty());
  EXPECT_EQ(read_file(path).find("__metadata__"), std::string::npos);
  EXPECT_TRUE(same_bytes(g.read("x"), tensors[0].second));
}

TEST(Safetensors, ReadF32ConvertsHalfBfloatAndDouble) {
  ScratchDir dir;
  const std::vector<float> values = {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 0.333251953125f,
                                     INFINITY, -INFINITY};
  const int64_t n = static_cast<int64_t>(values.size());
  Tensor f16 = Tensor::empty({n}, DType::f16), bf16 = Tensor::empty({n}, DType::bf16), f32 = Tensor::empty({n});
  for (int64_t i = 0; i < n; ++i) {
    static_cast<uint16_t*>(f16.raw())[i] = f32_to_f16(values[i]);
    static_cast<uint16_t*>(bf16.raw())[i] = f32_to_bf16(values[i]);
    f32.data<float>()[i] = values[i];
  }
  const std::string path = dir / "conv.safetensors";
  write_safetensors(path, {{"h", f16}, {"b", bf16}, {"f", f32}, {"i", random_tensor({2}, DType::i32, 1)}});
  SafetensorsFile f(path);
  const Tensor h = f.read_f32("h"), b = f.read_f32("b"), x = f.read_f32("f");
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(h.data<float>()[i], f16_to_f32(f32_to_f16(values[i])));
    EXPECT_EQ(b.data<float>()[i], bf16_to_f32(f32_to_bf16(values[i])));
    EXPECT_EQ(x.data<float>()[i], values[i]);
  }
  EXPECT_EQ(h.data<float>()[6], 0.333251953125f);  // exactly representable in half
  EXPECT_EQ(h.data<float>()[4], 65504.0f);
  try {
    f.read_f32("i");
    ADD_FAILURE() << "read_f32 converted an integer tensor";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("'i'"), std::string::npos) << e.what();
  }

  // F64 (written by hand: we have no f64 Tensor) converts with rounding to nearest.
  const double d[3] = {1.0 / 3.0, -1e300, 0.1};
  std::string buf(reinterpret_cast<const char*>(d), sizeof d);
  const std::string p64 = dir / "f64.safetensors";
  write_file(p64, st_bytes(R"({"d":{"dtype":"F64","shape":[3],"data_offsets":[0,24]}})", buf));
  SafetensorsFile g(p64);
  const Tensor t = g.read_f32("d");
  EXPECT_EQ(t.data<float>()[0], static_cast<float>(1.0 / 3.0));
  EXPECT_EQ(t.data<float>()[1], -INFINITY);
  EXPECT_EQ(t.data<float>()[2], 0.1f);
  EXPECT_THROW(g.read("d"), ConfigError);  // no f64 Tensor
}

// Files written byte by byte after the specification (no padding, whitespace, keys in any order,
// metadata last, dtypes we cannot hold, empty tensors).
TEST(Safetensors, HandWrittenFilesFollowingTheSpecParse) {
  ScratchDir dir;
  {
    // The reference implementation's own example: {"test": I32 [2,2]} with metadata after it.
    std::string data(16, '\0');
    const int32_t v[4] = {1, -2, 3, 1 << 30};
    std::memcpy(data.data(), v, 16);
    const std::string path = dir / "spec.safetensors";
    write_file(path, st_bytes(R"({"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"foo":"bar"}})",
                              data));
    SafetensorsFile f(path);
    EXPECT_EQ(f.names(), std::vector<std::string>{"test"});
    EXPECT_EQ(f.metadata().at("foo"), "bar");
    const Tensor t = f.read("test");
    EXPECT_EQ(t.shape(), (Shape{2, 2}));
    EXPECT_EQ(t.dtype(), DType::i32);
    EXPECT_EQ(t.data<int32_t>()[3], 1 << 30);
    EXPECT_EQ(t.data<int32_t>()[1], -2);
  }
  {
    // Key order shuffled, whitespace padding, tensors listed out of offset order, a BOOL, an
    // empty tensor sharing an offset, a big-endian-looking byte pattern read little-endian.
    const std::string header =
        "{ \"b\" : {\"data_offsets\": [4, 7], \"shape\": [3], \"dtype\": \"BOOL\"},\n"
        "  \"a\": {\"shape\": [], \"dtype\": \"F32\", \"data_offsets\": [0, 4]},\n"
        "  \"e\": {\"dtype\": \"F16\", \"shape\": [0, 5], \"data_offsets\": [7, 7]},\n"
        "  \"c\": {\"dtype\": \"U16\", \"shape\": [1], \"data_offsets\": [7, 9]} }   ";
    std::string data;
    const float one = 1.0f;
    data.append(reinterpret_cast<const char*>(&one), 4);
    data += std::string("\x01\x00\x01", 3);
    data += std::string("\x34\x12", 2);
    const std::string path = dir / "shuffled.safetensors";
    write_file(path, st_bytes(header, data));
    SafetensorsFile f(path);
    EXPECT_EQ(f.names(), (std::vector<std::string>{"a", "b", "e", "c"}));
    EXPECT_EQ(f.read("a").data<float>()[0], 1.0f);
    EXPECT_EQ(f.read("c").data<uint16_t>()[0], 0x1234);
    EXPECT_EQ(f.read("e").numel(), 0);
    EXPECT_EQ(f.read_f32("e").shape(), (Shape{0, 5}));
    EXPECT_EQ(f.info("b").dtype, "BOOL");
    EXPECT_EQ(f.info("b").nbytes(), 3u);
    EXPECT_THROW(f.read("b"), ConfigError);  // a file may hold BOOL; a Tensor cannot
    EXPECT_TRUE(f.metadata().empty());
  }
  {
    // No tensors at all.
    const std::string path = dir / "empty.safetensors";
    write_file(path, st_bytes("{}", ""));
    SafetensorsFile f(path);
    EXPECT_TRUE(f.names().empty());
    write_safetensors(path, {});
    EXPECT_TRUE(SafetensorsFile(path).names().empty());
  }
}

TEST(Safetensors, CorruptFilesAreRejectedNamingTheFile) {
  ScratchDir dir;
  const std::string f4(4, '\0'), f8(8, '\0'), f12(12, '\0');
  auto one = [](const std::string& entry) { return "{\"t\":" + entry + "}"; };

  // Length prefix.
  expect_rejected(dir, "", {"shorter than"});
  expect_rejected(dir, std::string(5, '\0'), {"shorter than"});
  expect_rejected(dir, le64(100) + "{}", {"larger than the file"});
  expect_rejected(dir, le64(200'000'000) + "{}", {"100 MB"});
  expect_rejected(dir, le64(~uint64_t{0}) + "{}", {"100 MB"});

  // Header text.
  expect_rejected(dir, st_bytes("", ""), {"'{'"});
  expect_rejected(dir, st_bytes("[1, 2]", ""), {"'{'"});
  expect_rejected(dir, st_bytes("{\"t\": ", ""), {"header"});
  expect_rejected(dir, st_bytes("{\"a\": {}} trailing", ""), {"header"});
  expect_rejected(dir, st_bytes("{\"a\": \"\xff\"}", ""), {"header"});  // invalid UTF-8
  expect_rejected(dir, st_bytes(std::string("{} \0\0", 5), ""), {"header"});             // NUL padding is not whitespace

  // Entries.
  expect_rejected(dir, st_bytes(one("5"), ""), {"'t'", "not a JSON object"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[1]})"), f4), {"'t'", "missing key 'data_offsets'"});
  expect_rejected(dir, st_bytes(one(R"({"shape":[1],"data_offsets":[0,4]})"), f4), {"'t'", "missing key 'dtype'"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","data_offsets":[0,4]})"), f4), {"'t'", "missing key 'shape'"});
  {  // as the reference reader (serde, unknown fields allowed; metadata an Option): an entry's
     // extra key is ignored, and "__metadata__": null is no metadata
    const std::string path = dir / "lenient.safetensors";
    write_file(path, st_bytes(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"crc":0},"__metadata__":null})", f4));
    SafetensorsFile f(path);
    EXPECT_EQ(f.names(), std::vector<std::string>{"t"});
    EXPECT_TRUE(f.metadata().empty());
  }
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F128","shape":[1],"data_offsets":[0,16]})"), std::string(16, '\0')),
                  {"'t'", "unknown dtype 'F128'"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":"f32","shape":[1],"data_offsets":[0,4]})"), f4),
                  {"'t'", "unknown dtype"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":4,"shape":[1],"data_offsets":[0,4]})"), f4), {"'t'", "dtype"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[-1],"data_offsets":[0,4]})"), f4), {"'t'", "shape"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[1.0],"data_offsets":[0,4]})"), f4), {"'t'", "shape"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":["1"],"data_offsets":[0,4]})"), f4), {"'t'", "shape"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":1,"data_offsets":[0,4]})"), f4), {"'t'", "shape"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[1],"data_offsets":[4,0]})"), f4),
                  {"'t'", "begin > end"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[1],"data_offsets":[4]})"), f4),
                  {"'t'", "[begin, end]"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4,8]})"), f8),
                  {"'t'", "[begin, end]"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,-4]})"), f4),
                  {"'t'", "data_offsets"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4e0]})"), f4),
                  {"'t'", "data_offsets"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,4]})"), f4),
                  {"'t'", "needs 8"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]})"), f4),
                  {"'t'", "2^64"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), f4),
                  {"'t'", "outside"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[1],"data_offsets":[99999999999999,100000000000003]})"), f4),
                  {"'t'", "outside"});

  // Layout of the buffer.
  expect_rejected(dir,
                  st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                           f12),
                  {"'b'", "overlaps", "'a'"});
  expect_rejected(dir,
                  st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                           f8),
                  {"overlaps"});
  expect_rejected(dir,
                  st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                           f12),
                  {"hole", "'b'"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), f8), {"hole", "'t'"});
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})"), f8), {"trailing"});
  expect_rejected(dir, st_bytes("{}", f4), {"trailing"});
  expect_rejected(dir,
                  st_bytes(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                           f8),
                  {"duplicate"});

  // Metadata.
  expect_rejected(dir, st_bytes(R"({"__metadata__":{"k":1}})", ""), {"metadata", "'k'"});
  expect_rejected(dir, st_bytes(R"({"__metadata__":{"k":null}})", ""), {"metadata", "'k'"});
  expect_rejected(dir, st_bytes(R"({"__metadata__":["k"]})", ""), {"__metadata__"});

  // Not a file.
  EXPECT_THROW(SafetensorsFile(dir / "missing.safetensors"), ConfigError);
  try {
    SafetensorsFile f(dir / "missing.safetensors");
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("missing.safetensors"), std::string::npos);
  }
}

TEST(Safetensors, TruncationAfterOpenIsReportedAtRead) {
  ScratchDir dir;
  const std::string path = dir / "t.safetensors";
  write_safetensors(path, {{"a", random_tensor({16}, DType::f32, 1)}, {"b", random_tensor({16}, DType::f32, 2)}});
  SafetensorsFile f(path);
  fs::resize_file(path, fs::file_size(path) - 10);
  EXPECT_NO_THROW(f.read("a"));
  try {
    f.read("b");
    ADD_FAILURE() << "read past the end";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("'b'"), std::string::npos) << msg;
  }
}

TEST(Safetensors, WriteIsAtomic) {
  ScratchDir dir;
  const std::string path = dir / "m.safetensors";
  const Tensor old_t = random_tensor({8}, DType::f32, 1);
  write_safetensors(path, {{"old", old_t}});
  const std::string old_bytes = read_file(path);

  // While the new file is being written the old one is intact under the final name and the
  // bytes go to a temporary sibling.
  const std::vector<SafetensorsEntry> entries = {{"a", DType::f32, {4}}, {"b", DType::bf16, {2, 3}}};
  const Tensor a = random_tensor({4}, DType::f32, 2), b = random_tensor({2, 3}, DType::bf16, 3);
  bool checked = false;
  write_safetensors_streamed(path, entries, [&](size_t i) {
    if (i == 1) {
      EXPECT_EQ(read_file(path), old_bytes);
      const auto names = dir.entries();
      EXPECT_EQ(names.size(), 2u);
      EXPECT_TRUE(std::any_of(names.begin(), names.end(),
                              [](const std::string& n) { return n.rfind("m.safetensors.tmp-", 0) == 0; }));
      checked = true;
    }
    return i == 0 ? a : b;
  });
  EXPECT_TRUE(checked);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});
  SafetensorsFile f(path);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(same_bytes(f.read("b"), b));

  // A failure half-way leaves the previous file untouched and no temporary behind.
  const std::string good = read_file(path);
  EXPECT_THROW(write_safetensors_streamed(path, entries,
                                          [&](size_t i) -> Tensor {
                                            if (i == 1) throw ConfigError("producer failed");
                                            return a;
                                          }),
               ConfigError);
  EXPECT_EQ(read_file(path), good);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});
  // A produced tensor that differs from its announced shape is an internal error, same cleanup.
  EXPECT_THROW(write_safetensors_streamed(path, entries, [&](size_t) { return a; }), Error);
  EXPECT_EQ(read_file(path), good);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});

  // An unwritable destination is a ConfigError naming it.
  const std::string bad = dir / "no/such/dir/x.safetensors";
  try {
    write_safetensors(bad, {{"a", a}});
    ADD_FAILURE() << "wrote into a missing directory";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
  // Caller bugs are internal errors.
  EXPECT_THROW(write_safetensors(path, {{"a", a}, {"a", a}}), Error);
  EXPECT_THROW(write_safetensors(path, {{"__metadata__", a}}), Error);
  EXPECT_THROW(write_safetensors(path, {{"a", Tensor::empty({4, 4}).slice(1, 0, 2)}}), Error);
  EXPECT_EQ(read_file(path), good);
}
