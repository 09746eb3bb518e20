#!/usr/bin/env bash
# Rebuild the committed demo bundle sdk_template/demo_ppocrv4 (PP-OCRv4 det + cls + rec)
# from the PP-OCR ONNX models in ../shared/models with tools/build_sdk.py: the two
# crop-stage bundles first, then the detector with both as its stages. Its golden
# image is the page tools/demo.py draws; the bundle carries only the Paddle Lite
# models (--no-onnx). Same inputs, same paddle_lite_opt: the same bytes as committed.
#   tools/build_demo_bundle.sh [SHARED_MODELS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
models=${1:-../shared/models}
cfg=tools/demo_bundle
out=build/demo_bundle
mkdir -p "$out"
py=.venv-tools/bin/python
.venv/bin/python -c "import sys; sys.path.insert(0, 'tools'); import cv2, demo
cv2.imwrite(sys.argv[1], demo.draw_text_page(*demo.SIZE))" "$out/golden.png"
$py tools/build_sdk.py --model "$models/ppocr_cls/onnx/ch_ppocr_mobile_v2.0_cls_sanitized.onnx" \
    --config $cfg/cls.json --labels "$models/ppocr_cls/labels.txt" --targets x86,arm --out $out/cls.zip
$py tools/build_sdk.py --model "$models/ppocrv4_rec/onnx/ch_PP-OCRv4_rec_infer.onnx" \
    --config $cfg/rec.json --labels "$models/ppocrv4_rec/keys.txt" --targets x86,arm --out $out/rec.zip
$py tools/build_sdk.py --model "$models/ppocrv4_det/onnx/ch_PP-OCRv4_det_infer.onnx" \
    --config $cfg/det.json --config $cfg/cascade.json --notice $cfg/NOTICE --targets x86,arm \
    --golden "$out/golden.png" --no-onnx --keep-dir sdk_template/demo_ppocrv4 --out $out/demo_ppocrv4.zip
