#!/usr/bin/env bash
# Packs built executables with the non-system shared libraries they need into a relocatable
# tarball, for clusters whose compute nodes cannot install packages. glibc and the CUDA/NVIDIA
# libraries (driver, runtime, cuBLAS, NCCL, ...) are left to the host: they must match its
# driver. Everything else ldd resolves (HDF5, yaml-cpp, SentencePiece, OpenBLAS, OpenMPI and
# its plugins, libstdc++, ...) is copied.
#
# Layout of the bundle:
#   NAME/bin/<tool>       wrapper: sets LD_LIBRARY_PATH (and OpenMPI's plugin path), execs the real binary
#   NAME/libexec/<tool>   the executable as built
#   NAME/lib/             the bundled libraries (lib/openmpi/: OpenMPI's MCA plugins)
#   NAME/bin/mpirun       with --launcher: Open MPI's launcher, with its help files (share/),
#                         settings (etc/) and PMIx plugins (lib/pmix/)
#   NAME/env.sh           `source` it to use the bundle's libraries from a job script / mpiexec line
#   NAME/MANIFEST         every bundled file and where it came from
#
# Usage: pipelines/bundle.sh [--build DIR] [--output FILE.tar.gz] [--name NAME]
#                            [--exclude REGEX] [--no-mpi-plugins] [--launcher] [EXECUTABLE...]
#   --build DIR        build tree (default: build); executables default to DIR/tools/llm-*
#   --output FILE      tarball to write (default: NAME.tar.gz in the current directory)
#   --name NAME        top directory inside the tarball (default: libllm-<git describe>)
#   --exclude REGEX    also leave libraries whose file name matches REGEX to the host (e.g.
#                      'libmpi|libopen-' to use the cluster's ABI-compatible MPI)
#   --no-mpi-plugins   do not copy OpenMPI's dlopen'ed MCA plugins
#   --launcher         also bundle Open MPI's launcher (bin/mpirun, bin/mpiexec), to start ranks
#                      on one node that has no MPI installation (a test machine; the GPU check
#                      of layouts with several ranks); on a cluster, use its own mpiexec
# Example:
#   pipelines/bundle.sh --build build --output /tmp/libllm.tar.gz
#   tar -xzf /tmp/libllm.tar.gz -C $HOME && $HOME/libllm-*/bin/llm-pretrain --help
set -euo pipefail

build=build output="" name="" exclude="" mpi_plugins=1 launcher=0
exes=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --output) output="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    --exclude) exclude="$2"; shift 2 ;;
    --no-mpi-plugins) mpi_plugins=0; shift ;;
    --launcher) launcher=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "bundle.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) exes+=("$1"); shift ;;
  esac
done

if [[ ${#exes[@]} -eq 0 ]]; then
  for f in "$build"/tools/llm-*; do [[ -x "$f" && -f "$f" ]] && exes+=("$f"); done
fi
[[ ${#exes[@]} -gt 0 ]] || { echo "bundle.sh: no executables found in $build/tools (build first, or name them)" >&2; exit 2; }
for e in "${exes[@]}"; do
  [[ -x "$e" ]] || { echo "bundle.sh: $e is not an executable" >&2; exit 2; }
done
src_dir="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "$name" ]]; then
  name="libllm-$(git -C "$src_dir" describe --always --dirty 2>/dev/null || echo unknown)"
fi
[[ -n "$output" ]] || output="$PWD/$name.tar.gz"

# Left to the host: the C library and the dynamic loader, and everything from the CUDA toolkit
# or the NVIDIA driver.
host_regex='^(linux-vdso|linux-gate|ld-linux.*|libc|libm|libdl|libpthread|librt|libresolv|libutil|libanl|libnsl|libBrokenLocale|libmvec)\.so|^lib(cuda|cudart|cublas|cublasLt|nccl|nvidia-.*|nvrtc.*|nvJitLink|cufft|curand|cusparse|cusolver|cudnn.*|nvToolsExt)\.so'

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"
mkdir -p "$root/bin" "$root/libexec" "$root/lib"
: > "$root/MANIFEST"

# Copies every non-host library ldd resolves for the ELF files given.
bundle_deps() {
  local f lib path base
  for f in "$@"; do
    while read -r lib path; do
      base="$(basename "$lib")"
      [[ "$base" =~ $host_regex ]] && continue
      [[ -n "$exclude" && "$base" =~ $exclude ]] && continue
      if [[ "$path" == "not" ]]; then
        echo "bundle.sh: $f needs $lib, which ldd cannot find (fix the build environment first)" >&2
        exit 1
      fi
      [[ -e "$root/lib/$base" ]] && continue
      cp -L "$path" "$root/lib/$base"
      echo "lib/$base <- $(readlink -f "$path")" >> "$root/MANIFEST"
    done < <(ldd "$f" | awk '/=>/ {print $1, $3} !/=>/ && NF {print $1, $1}')
  done
}

for e in "${exes[@]}"; do
  tool="$(basename "$e")"
  cp -L "$e" "$root/libexec/$tool"
  echo "libexec/$tool <- $(readlink -f "$e")" >> "$root/MANIFEST"
  cat > "$root/bin/$tool" <<'WRAP'
#!/bin/sh
# Runs the bundled executable of the same name with the bundle's libraries.
here="$(cd "$(dirname "$0")/.." && pwd)"
. "$here/env.sh"
exec "$here/libexec/$(basename "$0")" "$@"
WRAP
  chmod +x "$root/bin/$tool"
done
bundle_deps "${exes[@]}"

# OpenMPI loads its transports and launch components with dlopen: copy them and their deps.
if [[ $mpi_plugins -eq 1 && -e "$root/lib/libmpi.so.40" ]]; then
  mpi_lib_dir="$(dirname "$(readlink -f "$(ldd "${exes[0]}" | awk '$1 ~ /^libmpi\.so/ {print $3}')")")"
  for d in "$mpi_lib_dir/openmpi3" "$mpi_lib_dir/openmpi" "$mpi_lib_dir/openmpi/lib/openmpi3" \
           "$mpi_lib_dir/openmpi/lib/openmpi"; do
    if compgen -G "$d/mca_*.so" > /dev/null; then
      mkdir -p "$root/lib/openmpi"
      cp -L "$d"/*.so "$root/lib/openmpi/"
      echo "lib/openmpi/ <- $d" >> "$root/MANIFEST"
      bundle_deps "$root"/lib/openmpi/*.so
      break
    fi
  done
fi

# Open MPI's launcher, relocated: the wrapper points Open MPI's install directories (OPAL_*) at
# the bundle, so mpirun and the ranks it starts find their plugins, help files and settings here.
if [[ $launcher -eq 1 ]]; then
  run="$(command -v orterun || command -v mpirun || true)"
  version="$([[ -n "$run" ]] && "$run" --version 2>&1 || true)"
  if [[ "$version" != *"Open MPI"* && "$version" != *"OpenRTE"* ]]; then
    echo "bundle.sh: --launcher needs Open MPI's mpirun (orterun) on PATH" >&2
    exit 2
  fi
  if [[ ! -d "$root/lib/openmpi" ]]; then
    echo "bundle.sh: --launcher needs Open MPI and its plugins in the bundle (an executable linked to it;" \
         "no --no-mpi-plugins, no --exclude of it)" >&2
    exit 2
  fi
  run="$(readlink -f "$run")"
  cp -L "$run" "$root/libexec/mpirun"
  echo "libexec/mpirun <- $run" >> "$root/MANIFEST"
  launch=("$root/libexec/mpirun")
  if [[ -x "$(dirname "$run")/orted" ]]; then  # the daemon, for hosts other than the launching one
    cp -L "$(dirname "$run")/orted" "$root/libexec/orted"
    echo "libexec/orted <- $(dirname "$run")/orted" >> "$root/MANIFEST"
    launch+=("$root/libexec/orted")
  fi
  bundle_deps "${launch[@]}"
  mkdir -p "$root/share/openmpi" "$root/etc"
  info="$(command -v ompi_info > /dev/null && ompi_info --path all 2> /dev/null || true)"
  pkgdata="$(awk -F': *' '$1 ~ /Pkgdatadir$/ && !n++ {print $2}' <<< "$info")"
  sysconf="$(awk -F': *' '$1 ~ /Sysconfdir$/ && !n++ {print $2}' <<< "$info")"
  if [[ -d "$pkgdata" ]]; then
    cp -rL "$pkgdata"/. "$root/share/openmpi/"
    echo "share/openmpi/ <- $pkgdata" >> "$root/MANIFEST"
  fi
  if [[ -f "$sysconf/openmpi-mca-params.conf" ]]; then
    cp -L "$sysconf/openmpi-mca-params.conf" "$root/etc/"
    echo "etc/openmpi-mca-params.conf <- $sysconf/openmpi-mca-params.conf" >> "$root/MANIFEST"
  fi
  # An external PMIx (Debian's libpmix2) loads plugins of its own.
  pmix="$(ldd "$root/libexec/mpirun" "$root"/lib/openmpi/*.so 2> /dev/null | awk '$1 ~ /^libpmix\.so/ && !n++ {print $3}')"
  if [[ -n "$pmix" ]] && compgen -G "$(dirname "$(readlink -f "$pmix")")/pmix/*.so" > /dev/null; then
    pmix_dir="$(dirname "$(readlink -f "$pmix")")/pmix"
    mkdir -p "$root/lib/pmix"
    cp -L "$pmix_dir"/*.so "$root/lib/pmix/"
    echo "lib/pmix/ <- $pmix_dir" >> "$root/MANIFEST"
    bundle_deps "$root"/lib/pmix/*.so
  fi
  for launcher_name in mpirun mpiexec; do
    cat > "$root/bin/$launcher_name" <<'WRAP'
#!/bin/sh
# Open MPI's launcher from the bundle: its install directories are the bundle's.
here="$(cd "$(dirname "$0")/.." && pwd)"
. "$here/env.sh"
export OPAL_PREFIX="$here" OPAL_EXEC_PREFIX="$here" OPAL_BINDIR="$here/libexec" OPAL_LIBDIR="$here/lib" \
  OPAL_PKGLIBDIR="$here/lib/openmpi" OPAL_DATAROOTDIR="$here/share" OPAL_DATADIR="$here/share" \
  OPAL_PKGDATADIR="$here/share/openmpi" OPAL_SYSCONFDIR="$here/etc"
[ -d "$here/lib/pmix" ] && export PMIX_MCA_mca_base_component_path="$here/lib/pmix"
# Without ssh or rsh Open MPI's launcher refuses to start even on one node: launch locally only.
if [ -z "${OMPI_MCA_plm:-}${OMPI_MCA_plm_rsh_agent:-}" ] && ! command -v ssh > /dev/null 2>&1 &&
   ! command -v rsh > /dev/null 2>&1; then
  export OMPI_MCA_plm=isolated
fi
exec "$here/libexec/mpirun" "$@"
WRAP
    chmod +x "$root/bin/$launcher_name"
  done
fi

cat > "$root/env.sh" <<'ENV'
# Source this to run the bundle's executables with its libraries (CUDA comes from the host).
# (POSIX sh: the wrapper sets $here; bash users sourcing it get the path from $BASH_SOURCE.)
if [ -n "${here:-}" ]; then LLM_BUNDLE="$here"; else LLM_BUNDLE="$(cd "$(dirname "${BASH_SOURCE:-$0}")" && pwd)"; fi
export LD_LIBRARY_PATH="$LLM_BUNDLE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ -d "$LLM_BUNDLE/lib/openmpi" ]; then
  export OMPI_MCA_mca_base_component_path="$LLM_BUNDLE/lib/openmpi"
fi
export PATH="$LLM_BUNDLE/bin:$PATH"
ENV

tar -czf "$output" -C "$stage" "$name"
echo "bundle.sh: wrote $output ($(wc -l < "$root/MANIFEST") files; $(du -sh "$root" | cut -f1) unpacked)"
