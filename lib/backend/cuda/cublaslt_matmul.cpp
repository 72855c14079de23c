#include "backend/cuda/cublaslt_matmul.h"

#include <algorithm>

#include "backend/cuda/cuda_check.h"

namespace llm::cuda {

namespace {
constexpr size_t kWorkspaceBytes = size_t(32) << 20;  // Hopper kernels want 32 MiB

// The alignment cuBLASLt may assume for a matrix: of its pointer and of every column's start, ld
// elements apart (at most 256 bytes). A 16-bit [3, 66] output has its columns 132 bytes apart, so
// 4-byte aligned whatever the pointer; claiming the pointer's 256 gave wrong values on an H200
// (run 20, LinearWithFewRows: N 3, K 2056, OC 66 in bf16/f16, with or without the bias).
int alignment(const void* p, int64_t ld, DType t) {
  const auto a = reinterpret_cast<uintptr_t>(p) | static_cast<uintptr_t>(ld * static_cast<int64_t>(dtype_size(t)));
  int al = 256;
  while (al > 1 && (a % static_cast<uintptr_t>(al)) != 0) al /= 2;
  return al;
}

const char* epilogue_name(Epilogue e) {
  switch (e) {
    case Epilogue::none: return "none";
    case Epilogue::bias: return "bias";
    case Epilogue::gelu_bias_aux: return "gelu_bias_aux";
    case Epilogue::dgelu: return "dgelu";
    case Epilogue::bgradb: return "bgradb";
  }
  return "?";
}

std::string describe(const Matmul& mm, const char* op) {
  return detail::concat(op, " (cuBLASLt ", mm.trans_a ? "T" : "N", mm.trans_b ? "T" : "N", " m=", mm.m, " n=", mm.n,
                        " k=", mm.k, " A ", dtype_name(mm.a_type), " lda=", mm.lda, " B ", dtype_name(mm.b_type),
                        " ldb=", mm.ldb, " D ", dtype_name(mm.d_type), " ldd=", mm.ldd, " beta=", mm.beta,
                        " epilogue=", epilogue_name(mm.epilogue), ")");
}
}  // namespace

cudaDataType_t cuda_data_type(DType t) {
  switch (t) {
    case DType::f32: return CUDA_R_32F;
    case DType::bf16: return CUDA_R_16BF;
    case DType::f16: return CUDA_R_16F;
    default: LLM_FAIL("cuBLASLt: unsupported element type ", dtype_name(t));
  }
}

struct CublasLt::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (desc) cublasLtMatmulDescDestroy(desc);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (d) cublasLtMatrixLayoutDestroy(d);
  }
};

CublasLt::CublasLt(cudaStream_t stream) : stream_(stream) {
  CUBLAS_CHECK(cublasLtCreate(&handle_), "creating the cuBLASLt handle");
  CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes), "cuBLASLt workspace of ", kWorkspaceBytes, " bytes");
  workspace_bytes_ = kWorkspaceBytes;
}

CublasLt::~CublasLt() {
  plans_.clear();
  if (workspace_) (void)cudaFree(workspace_);
  if (handle_) (void)cublasLtDestroy(handle_);
}

std::vector<Matmul> CublasLt::pieces(const Matmul& mm, const char* op) const {
  if (mm.k == 0) LLM_FAIL(describe(mm, op), ": k = 0 is not supported");
  try {
    return split_matmul(mm);
  } catch (const Error& e) {
    LLM_FAIL(describe(mm, op), ": ", e.what());
  }
}

bool CublasLt::run_if_supported(const Matmul& mm, const char* op, std::string* why) {
  if (mm.m == 0 || mm.n == 0) return true;
  // Every piece's plan before the first launch: a piece without an algorithm fails the call
  // before any piece has written (a caller's fallback then starts from untouched outputs).
  std::vector<Matmul> ps;
  std::vector<Plan*> plans;
  try {
    ps = pieces(mm, op);
    for (const Matmul& p : ps) plans.push_back(&plan(p, op));
  } catch (const Error& e) {
    if (!why) throw;
    *why = e.what();
    return false;
  }
  for (size_t i = 0; i < ps.size(); ++i) launch(ps[i], *plans[i], op);
  return true;
}

void CublasLt::run(const Matmul& mm, const char* op) { run_if_supported(mm, op, nullptr); }

CublasLt::Plan& CublasLt::plan(const Matmul& mm, const char* op) {
  const bool fp32 = mm.a_type == DType::f32;
  LLM_CHECK(mm.a_type == mm.b_type, describe(mm, op), ": A and B must have the same type");
  LLM_CHECK(!fp32 || mm.d_type == DType::f32, describe(mm, op), ": fp32 inputs need an fp32 output");
  const cublasComputeType_t compute =
      fp32 ? (allow_tf32_ ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F) : CUBLAS_COMPUTE_32F;
  const std::string key = detail::concat(
      mm.trans_a, mm.trans_b, ',', mm.m, ',', mm.n, ',', mm.k, ',', int(mm.a_type), int(mm.d_type), ',', mm.lda, ',',
      mm.ldb, ',', mm.ldd, ',', mm.ld_aux, ',', int(mm.epilogue), ',', mm.beta != 0.0f, ',', alignment(mm.a, mm.lda, mm.a_type), ',',
      alignment(mm.b, mm.ldb, mm.b_type), ',', alignment(mm.d, mm.ldd, mm.d_type), ',', alignment(mm.bias, 0, mm.d_type), ',',
      alignment(mm.aux, mm.ld_aux, mm.d_type), ',', int(compute));
  // A shape without an algorithm is remembered: its callers fall back on every call, and the
  // heuristic need not be asked again.
  if (const auto f = unsupported_.find(key); f != unsupported_.end()) throw Error(f->second);
  auto it = plans_.find(key);
  if (it == plans_.end()) {
    auto plan = std::make_unique<Plan>();
    const std::string what = describe(mm, op);
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, compute, CUDA_R_32F), what);
    const cublasOperation_t ta = mm.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = mm.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), what);
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), what);
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
    switch (mm.epilogue) {
      case Epilogue::none: epi = CUBLASLT_EPILOGUE_DEFAULT; break;
      case Epilogue::bias: epi = CUBLASLT_EPILOGUE_BIAS; break;
      case Epilogue::gelu_bias_aux: epi = CUBLASLT_EPILOGUE_GELU_AUX_BIAS; break;
      case Epilogue::dgelu: epi = CUBLASLT_EPILOGUE_DGELU; break;
      case Epilogue::bgradb: epi = CUBLASLT_EPILOGUE_BGRADB; break;
    }
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)), what);
    if (mm.epilogue == Epilogue::bgradb) {
      const cudaDataType_t bias_type = CUDA_R_32F;
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                  sizeof(bias_type)),
                   what);
    }
    if (mm.epilogue == Epilogue::gelu_bias_aux || mm.epilogue == Epilogue::dgelu) {
      const int64_t ld = mm.ld_aux;
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)),
                   what);
    }
    // The epilogue's vectors are set for the heuristic too: it takes their alignment from the
    // pointers (null reads as fully aligned), so a plan is made, and keyed, for the alignment
    // it will run with. launch() sets them again for each call.
    if (mm.bias)
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &mm.bias, sizeof(mm.bias)),
                   what);
    if (mm.aux)
      CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &mm.aux, sizeof(mm.aux)),
          what);
    const cudaDataType_t at = cuda_data_type(mm.a_type), dt = cuda_data_type(mm.d_type);
    // Stored shapes (column-major): A is m x k (or k x m when transposed), B is k x n (or n x k).
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->a, at, mm.trans_a ? mm.k : mm.m, mm.trans_a ? mm.m : mm.k, mm.lda),
                 what);
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->b, at, mm.trans_b ? mm.n : mm.k, mm.trans_b ? mm.k : mm.n, mm.ldb),
                 what);
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->d, dt, mm.m, mm.n, mm.ldd), what);

    cublasLtMatmulPreference_t pref = nullptr;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref), what);
    struct PrefGuard {  // destroyed however this block ends (a failed attribute throws)
      cublasLtMatmulPreference_t p;
      ~PrefGuard() { (void)cublasLtMatmulPreferenceDestroy(p); }
    } pref_guard{pref};
    const uint64_t ws = workspace_bytes_;
    const uint32_t al_a = alignment(mm.a, mm.lda, mm.a_type), al_b = alignment(mm.b, mm.ldb, mm.b_type),
                   al_d = alignment(mm.d, mm.ldd, mm.d_type);
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)), what);
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a)), what);
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b)), what);
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof(al_d)), what);
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d)), what);
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, plan->desc, plan->a, plan->b, plan->d, plan->d,
                                                             pref, 1, &result, &found);
    try {
      CUBLAS_CHECK(st, what);
      LLM_CHECK(found > 0, what, ": cuBLASLt found no algorithm");
    } catch (const Error& e) {
      unsupported_.emplace(key, e.what());
      throw;
    }
    plan->algo = result.algo;
    it = plans_.emplace(key, std::move(plan)).first;
  }
  return *it->second;
}

void CublasLt::launch(const Matmul& mm, Plan& p, const char* op) {
  if (mm.epilogue == Epilogue::bias || mm.epilogue == Epilogue::gelu_bias_aux || mm.epilogue == Epilogue::bgradb)
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &mm.bias, sizeof(mm.bias)),
                 describe(mm, op));
  if (mm.epilogue == Epilogue::gelu_bias_aux || mm.epilogue == Epilogue::dgelu)
    CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &mm.aux, sizeof(mm.aux)),
        describe(mm, op));
  CUBLAS_CHECK(cublasLtMatmul(handle_, p.desc, &mm.alpha, mm.a, p.a, mm.b, p.b, &mm.beta, mm.d, p.d, mm.d, p.d,
                              &p.algo, workspace_, workspace_bytes_, stream_),
               describe(mm, op));
}

}  // namespace llm::cuda
