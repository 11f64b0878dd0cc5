#!/usr/bin/env bash
# Run a batchscore job with spark-submit: packages the code, ships conf/, passes the rest on.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: ./spark-submit.sh [spark-submit options] jobs/score.py --config FILE [--set key=value ...]

Packages `batchscore` (with `jobs` and `udfs` under it) into build/batchscore.zip for --py-files,
ships conf/ as an archive (unpacked as ./conf beside the driver in cluster mode),
and passes every other option to spark-submit unchanged (quoting preserved).

  spark-submit     $SPARK_HOME/bin/spark-submit when SPARK_HOME is set, else the
                   one inside the installed pyspark (.venv first, then python3)
  --master         defaults to local[*] when not given
  PYSPARK_PYTHON   the driver's and workers' Python; defaults to this checkout's .venv python
  BATCHSCORE_JVM_CACHE  `off`: a local driver does not use the class-data archive that
                   `batchscore jvm-cache` builds (default: used when it exists)
  BATCHSCORE_JARS  connector jars (hadoop-aws, AWS SDK, delta-spark) added to the classpath:
                   default jars/lib/spark/*.jar (jars/lib-spark3.5/spark/ for pyspark 3.5) when
                   `make jars` made them; a folder of jars;
                   or `none` when the cluster already has them

Examples:
  ./spark-submit.sh jobs/score.py --config conf/demo.yaml
  ./spark-submit.sh --master yarn --deploy-mode cluster \
      --properties-file conf/spark-cluster-cpu.conf jobs/score.py --config conf/demo.yaml
USAGE
}

case "${1:-}" in -h|--help|"") usage; exit 0 ;; esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The driver's Python: the workers' (PYSPARK_PYTHON) when that is set, so both run one stack
# (`make test-lts` points it at .venv-lts); else this checkout's .venv, else $PYTHON / python3.
if [[ -n "${PYSPARK_PYTHON:-}" ]] && command -v "$PYSPARK_PYTHON" >/dev/null; then PY="$PYSPARK_PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="${PYTHON:-python3}"; fi

# The installed pyspark's spark-submit, and the folder of connector jars `make jars` fetched for
# its Spark (jars/lib, or jars/lib-spark3.5 for pyspark 3.5: batchscore.core.compat).
mapfile -t found < <(PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c 'import os, pyspark
from batchscore.core.compat import jars_folder_name
print(os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")); print(jars_folder_name())' 2>/dev/null)
jars_lib="$ROOT/jars/${found[1]:-lib}"
if [[ -n "${SPARK_HOME:-}" ]]; then
  SUBMIT="$SPARK_HOME/bin/spark-submit"
else
  SUBMIT="${found[0]:-}"
fi
[[ -x "$SUBMIT" ]] || { echo "error: spark-submit not found at $SUBMIT (set SPARK_HOME or install pyspark)" >&2; exit 2; }

BUILD="$ROOT/build/spark-submit"
mkdir -p "$BUILD"
"$PY" - "$ROOT" "$BUILD" <<'PYZIP'
import os, sys, zipfile
root, build = sys.argv[1], sys.argv[2]
def pack(out, entries):
    """entries: (folder in the checkout, its name inside the zip)."""
    tmp = out + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for src, dst in entries:
            for base, subdirs, files in os.walk(os.path.join(root, src)):
                subdirs[:] = sorted(s for s in subdirs if s != "__pycache__")
                for f in sorted(files):
                    if f.endswith(".pyc"):
                        continue
                    full = os.path.join(base, f)
                    z.write(full, os.path.normpath(os.path.join(dst, os.path.relpath(full, os.path.join(root, src)))))
    os.replace(tmp, out)
# one import root, as the wheel installs it: batchscore/, batchscore/jobs/, batchscore/udfs/
pack(os.path.join(build, "batchscore.zip"), [("batchscore", "batchscore"), ("jobs", "batchscore/jobs"), ("udfs", "batchscore/udfs")])
pack(os.path.join(build, "conf.zip"), [("conf", ".")])
PYZIP

export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PY}"
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

# Options before the application file go to spark-submit; merge ours in.
opts=() app=() master="local[*]" have_master=0 have_log=0 jars="" driver_cp="" py_files="$BUILD/batchscore.zip" archives="$BUILD/conf.zip#conf"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --master) have_master=1; master="$2"; opts+=("$1" "$2"); shift 2 ;;
    --master=*) have_master=1; master="${1#--master=}"; opts+=("$1"); shift ;;
    --jars) jars="$2"; shift 2 ;;
    --driver-class-path) driver_cp="$2"; shift 2 ;;
    --driver-java-options|--driver-java-options=*) have_log=1; opts+=("$1"); [[ "$1" == *=* ]] || { opts+=("$2"); shift; }; shift ;;
    --py-files) py_files="$py_files,$2"; shift 2 ;;
    --archives) archives="$archives,$2"; shift 2 ;;
    --*) # an option with a value, unless it is a flag spark-submit knows
      case "$1" in
        --verbose|-v|--supervise|--help|--version|--load-spark-defaults) opts+=("$1"); shift ;;
        --*=*) opts+=("$1"); shift ;;
        *) opts+=("$1" "$2"); shift 2 ;;
      esac ;;
    *) app=("$@"); break ;;
  esac
done
[[ ${#app[@]} -gt 0 ]] || { echo "error: no application given (e.g. jobs/score.py)" >&2; usage >&2; exit 2; }
[[ $have_master -eq 1 ]] || opts+=(--master "local[*]")
# Spark's connectors (`make jars`). Local masters: straight onto the JVMs' classpath (nothing
# copied per run; the AWS SDK bundle is ~640 MB); other masters: shipped with --jars.
jar_dir="${BATCHSCORE_JARS:-$jars_lib/spark}"
connector_jars=()
if [[ "$jar_dir" != none && -d "$jar_dir" ]]; then
  shopt -s nullglob; connector_jars=("$jar_dir"/*.jar); shopt -u nullglob
fi
if [[ ${#connector_jars[@]} -gt 0 ]]; then
  if [[ "$master" == local* ]]; then
    classpath="$(IFS=:; echo "${connector_jars[*]}")"
    driver_cp="${driver_cp:+$driver_cp:}$classpath"
    opts+=(--conf "spark.executor.extraClassPath=$classpath")
  else
    jars="${jars:+$jars,}$(IFS=,; echo "${connector_jars[*]}")"
  fi
fi
# Local masters: the Python daemon imports TensorFlow once before forking the workers
# (udfs/daemon.py), unless the caller picked a daemon module.
if [[ "$master" == local* && " ${opts[*]} " != *spark.python.daemon.module* ]]; then
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the local daemon imports batchscore from here
  opts+=(--conf spark.python.daemon.module=batchscore.udfs.daemon)
fi
[[ -z "$jars" ]] || opts+=(--jars "$jars")
[[ -z "$driver_cp" ]] || opts+=(--driver-class-path "$driver_cp")
# Quiet driver logs (WARN) unless the caller brings its own driver Java options; a local
# driver maps its classes from the archive of `batchscore jvm-cache` when there is one.
if [[ $have_log -eq 0 ]]; then
  java_opts="-Dlog4j2.configurationFile=file:$ROOT/conf/log4j2.properties"
  if [[ "$master" == local* && "${BATCHSCORE_JVM_CACHE:-}" != off ]]; then
    archive="$(PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m batchscore jvm-cache --path --class-path "$driver_cp" 2>/dev/null || true)"
    [[ -z "$archive" ]] || java_opts="$java_opts -XX:SharedArchiveFile=$archive -Xlog:cds=off -Xlog:cds+dynamic=off"
  fi
  opts+=(--driver-java-options "$java_opts")
fi

exec "$SUBMIT" "${opts[@]}" --py-files "$py_files" --archives "$archives" "${app[@]}"
