#!/usr/bin/env bash
# Rebuild the committed demo bundle sdk_template/demo_ppocrv4 (PP-OCRv4 det + cls + rec)
# from the PP-OCR ONNX models in ../shared/models with tools/build_sdk.py: the two
# crop-stage bundles first, then the detector with both as its stages.
#   tools/build_demo_bundle.sh [SHARED_MODELS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
models=${1:-../shared/models}
cfg=tools/demo_bundle
out=build/demo_bundle
mkdir -p "$out"
py=.venv-tools/bin/python
$py tools/build_sdk.py --model "$models/ppocr_cls/onnx/ch_ppocr_mobile_v2.0_cls_sanitized.onnx" \
    --config $cfg/cls.json --labels "$models/ppocr_cls/labels.txt" --targets x86,arm --out $out/cls.zip
$py tools/build_sdk.py --model "$models/ppocrv4_rec/onnx/ch_PP-OCRv4_rec_infer.onnx" \
    --config $cfg/rec.json --labels "$models/ppocrv4_rec/keys.txt" --targets x86,arm --out $out/rec.zip
$py tools/build_sdk.py --model "$models/ppocrv4_det/onnx/ch_PP-OCRv4_det_infer.onnx" \
    --config $cfg/det.json --config $cfg/cascade.json --notice $cfg/NOTICE --targets x86,arm \
    --keep-dir sdk_template/demo_ppocrv4 --out $out/demo_ppocrv4.zip
