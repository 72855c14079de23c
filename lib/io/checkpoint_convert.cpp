#include "io/checkpoint_convert.h"

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/error.h"

namespace llm {

namespace fs = std::filesystem;

std::string to_json(const json::Value& v) {
  switch (v.kind()) {
    case json::Value::Kind::null: return "null";
    case json::Value::Kind::boolean: return v.as_bool() ? "true" : "false";
    case json::Value::Kind::number: {
      if (v.is_integer()) return std::to_string(v.as_int());
      char buf[40];
      for (int digits = 15; digits <= 17; ++digits) {  // shortest form that reads back exactly
        std::snprintf(buf, sizeof buf, "%.*g", digits, v.as_double());
        if (std::strtod(buf, nullptr) == v.as_double()) break;
      }
      return buf;
    }
    case json::Value::Kind::string: return json::quote(v.as_string());
    case json::Value::Kind::array: {
      std::string s = "[";
      for (const json::Value& x : v.as_array()) s += (s.size() > 1 ? ", " : "") + to_json(x);
      return s + "]";
    }
    case json::Value::Kind::object: {
      std::string s = "{";
      for (const auto& [k, x] : v.as_object()) s += (s.size() > 1 ? ", " : "") + json::quote(k) + ": " + to_json(x);
      return s + "}";
    }
  }
  return "null";
}

void refuse_output_inside(const std::string& output, const std::string& source_dir) {
  std::error_code ec;
  const fs::path src = fs::canonical(source_dir, ec);
  if (ec) return;  // the reader has opened it; a race is not worth a second message
  const fs::path dst = fs::weakly_canonical(fs::absolute(output), ec);
  if (ec) return;
  auto d = dst.begin();
  for (auto s = src.begin(); s != src.end(); ++s, ++d)
    if (d == dst.end() || *d != *s) return;
  throw ConfigError(detail::concat("--output ", output, ": is ", dst == src ? "" : "inside ", "the checkpoint it reads (",
                                   source_dir, "); write to a directory outside it"));
}

std::string convert_checkpoint(const std::string& src, const std::string& dst_root, const ConvertOptions& o) {
  if (o.shards < 1) throw ConfigError("--shards must be >= 1");
  if (o.dtype != DType::f32 && o.dtype != DType::bf16 && o.dtype != DType::f16)
    throw ConfigError("--dtype must be f32, bf16 or f16");
  CheckpointReader in = CheckpointReader::open(src);
  // The canonical iteration directory's parent is the source's save root however the path was
  // written ("runs/ck/iter_0000060/", ".", a symbolic link).
  if (fs::exists(dst_root) && fs::equivalent(fs::canonical(in.dir()).parent_path(), dst_root))
    throw ConfigError(dst_root + ": convert into a different directory than the source's");
  refuse_output_inside(dst_root, in.dir());
  CheckpointWriter out(dst_root, in.iteration());
  std::vector<std::pair<std::string, std::string>> tensors;
  for (const PieceInfo& p : in.pieces())
    if (tensors.empty() || tensors.back() != std::make_pair(p.category, p.name)) tensors.emplace_back(p.category, p.name);
  std::sort(tensors.begin(), tensors.end());
  tensors.erase(std::unique(tensors.begin(), tensors.end()), tensors.end());
  for (const auto& [category, name] : tensors) {
    if (!o.keep_optimizer && category.rfind("optimizer/", 0) == 0) continue;
    const Shape g = in.global_shape(category, name);
    const int parts = g.empty() ? 1 : static_cast<int>(std::min<int64_t>(o.shards, std::max<int64_t>(g[0], 1)));
    for (int k = 0; k < parts; ++k) {
      Box b = Box::whole(g);
      if (!g.empty()) {
        b.offset[0] = g[0] * k / parts;
        b.extent[0] = g[0] * (k + 1) / parts - b.offset[0];
      }
      Tensor piece = Tensor::empty(b.extent);
      in.read(category, name, b, piece);
      // The AdamW moments stay f32 whatever --dtype says: exp_avg_sq's ~1e-8 values flush to
      // zero in f16, and the first step after a resume would then be m / eps.
      const bool moment = category.rfind("optimizer/", 0) == 0;
      const DType t = moment ? DType::f32 : o.dtype;
      if (t == DType::f16) {
        const float* v = piece.data<float>();
        for (int64_t i = 0; i < piece.numel(); ++i)
          if (std::isfinite(v[i]) && std::fabs(v[i]) > 65504.0f)
            throw ConfigError(detail::concat(in.dir(), ": ", category, "/", name, " holds ", v[i],
                                             ", past f16's largest value 65504: convert to bf16 or f32"));
      }
      out.add(category, name, g, b, piece, t, k);
    }
  }
  // Same metadata (minus what the writer records itself), same tokenizer files.
  std::string fields;
  for (const auto& [key, value] : in.metadata().as_object()) {
    if (key == "pieces" || key == "format_version" || key == "iteration" || key == "conversion") continue;
    fields += (fields.empty() ? "" : ",\n  ") + json::quote(key) + ": " + to_json(value);
  }
  fields += detail::concat(fields.empty() ? "" : ",\n  ", "\"conversion\": {\"source\": ", json::quote(in.dir()), ", \"dtype\": \"",
                           dtype_name(o.dtype), "\", \"shards\": ", o.shards, ", \"optimizer\": ",
                           o.keep_optimizer ? "true" : "false", "}");
  const fs::path tok_dir = fs::path(in.dir()) / "tokenizer";
  if (fs::exists(tok_dir))
    for (const auto& e : fs::directory_iterator(tok_dir))
      out.add_file(e.path().string(), "tokenizer/" + e.path().filename().string());
  return out.commit(fields, o.keep_last);
}

}  // namespace llm
