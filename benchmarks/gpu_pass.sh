#!/usr/bin/env bash
# The GPU checks of issue 13 in one prepared pass, for a session that is lent a GPU machine
# (the `device` tool; docs/benchmarks.md, "GPU pass"). Two steps:
#
#   benchmarks/gpu_pass.sh prepare     # here, before the device call (network for pip, ~30 MB)
#   benchmarks/gpu_pass.sh run         # there: device run with carry [".device"], timeout_s 480
#
# `prepare` puts into .device/ (ignored by git through .git/info/exclude): the wheels of the
# packages tensorframe needs that the GPU image lacks (pydantic and its own needs, ase, vesin;
# for Python 3.12, manylinux x86-64), the plugins' egg-info folders (so that importlib finds
# their entry points on PYTHONPATH without an install), and a copy of the suite's datasets
# (../shared does not travel).
#
# `run` installs the wheels into /tmp/site, then, each stage under its own time limit so that
# one stuck stage does not eat the lease (at most 450 s in all; the speed pass rewrites its JSON
# after each task, so a stage cut short keeps the tasks it finished), writes into $OUT (at most 8
# files come back):
#   tests.log                  nvidia-smi, versions, and tests/test_devices.py (the CUDA cases run)
#   scaling-cuda-<p>.json      python -m benchmarks.bench_scaling --device cuda --precision <p>
#   speed-cuda-<p>.json        python -m benchmarks speed --device cuda --precision <p>
# for p in float32, tf32, bf16. Back here, copy them into benchmarks/results/ and write their
# docs sections (their own, never the CPU ones):
#   python -m benchmarks.bench_scaling --from-json benchmarks/results/scaling-cuda-<p>.json
#   python -m benchmarks speed-docs --json benchmarks/results/speed-cuda-<p>.json
# then register those sections in tests/test_bench_toolkit.py (RENDERERS).
set -u

here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here" || exit 2
DEVICE_DIR=.device
TASK_DATASETS=(e3nn-crystal-becs-eps abo3-p4mm-piezo deepmd-water-tensor deepmd-water-forces tensoap-water-response
               deepmd-nopbc-combustion matten-si-nmr)
WHEELS=(pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5 typing_extensions==4.16.0
        ase==3.29.0 vesin==0.6.2)
PLUGINS=(tensorframe-etgnn tensorframe-schnet tensorframe-cgcnn)
SPEED_MODELS=(--backbones etgnn etgnn-lean schnet --peers e3nn)

prepare() {  # GPU_PASS_PYTHON_VERSION: the wheels' Python (default 3.12, the GPU image's)
    local python="${PYTHON:-.venv/bin/python}" shared="${TENSORFRAME_DATASETS:-$here/../shared/datasets}"
    grep -qx "/$DEVICE_DIR/" .git/info/exclude 2>/dev/null || echo "/$DEVICE_DIR/" >> .git/info/exclude
    rm -rf "$DEVICE_DIR" && mkdir -p "$DEVICE_DIR/whl" "$DEVICE_DIR/site" "$DEVICE_DIR/datasets" || return 1
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_PASS_PYTHON_VERSION:-3.12}" \
        --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$DEVICE_DIR/whl" "${WHEELS[@]}" || { echo "prepare: pip download failed" >&2; return 1; }
    cp -r tensorframe.egg-info "$DEVICE_DIR/site/" 2>/dev/null  # the version in each record's environment
    for plugin in "${PLUGINS[@]}"; do
        local info=(plugins/"$plugin"/*.egg-info)
        [ -d "${info[0]}" ] || { echo "prepare: no egg-info in plugins/$plugin (run ./setup.sh first)" >&2; return 1; }
        cp -r "${info[0]}" "$DEVICE_DIR/site/"
    done
    for name in "${TASK_DATASETS[@]}"; do
        cp -r "$shared/$name" "$DEVICE_DIR/datasets/" || { echo "prepare: missing dataset $shared/$name" >&2; return 1; }
    done
    du -sh "$DEVICE_DIR"
    echo "prepare: done; device run: command 'benchmarks/gpu_pass.sh run', carry [\"$DEVICE_DIR\"], timeout_s 480"
}

stage() {  # stage SECONDS LOG COMMAND...: run COMMAND under a time limit, its output appended to LOG
    local seconds="$1" log="$2"
    shift 2
    echo "== $(date -u +%T) $* (limit ${seconds} s)" | tee -a "$log"
    timeout "$seconds" "$@" >> "$log" 2>&1
    local code=$?
    echo "== exit $code" | tee -a "$log"
}

run() {  # GPU_PASS_DEVICE (default cuda) and PYTHON (default python3): for a rehearsal on a CPU
    local out="${OUT:?run on the device machine: \$OUT is its output folder}" device="${GPU_PASS_DEVICE:-cuda}"
    local python="${PYTHON:-python3}"
    export PYTHONUNBUFFERED=1 TENSORFRAME_DATASETS="$here/$DEVICE_DIR/datasets" MPLBACKEND=Agg
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$DEVICE_DIR"/whl/*.whl || { echo "run: wheel install failed" >&2; exit 1; }
    local path="/tmp/site:$here/$DEVICE_DIR/site:$here"
    for plugin in "${PLUGINS[@]}"; do path="$path:$here/plugins/$plugin"; done
    export PYTHONPATH="$path"
    local log="$out/tests.log"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$log" 2>&1
    "$python" -c "import torch, e3nn, tensorframe; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, 'e3nn', e3nn.__version__); print(tensorframe.list_plugins())" >> "$log" 2>&1
    stage 90 "$log" "$python" -m pytest -q -p no:cacheprovider -rs tests/test_devices.py
    for precision in float32 tf32 bf16; do
        stage 60 "$log" "$python" -m benchmarks.bench_scaling --device "$device" --precision "$precision" \
            --sizes 135 1080 --repeats 5 --triplet-cutoffs --no-docs --no-plots \
            --json "$out/scaling-$device-$precision.json"
    done
    for precision in float32 tf32 bf16; do
        stage 60 "$log" "$python" -m benchmarks speed --device "$device" --precision "$precision" --tasks all \
            "${SPEED_MODELS[@]}" --repeats 3 --json "$out/speed-$device-$precision.json"
    done
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: benchmarks/gpu_pass.sh prepare|run" >&2; exit 2 ;;
esac
