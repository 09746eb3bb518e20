"""Test fixture: a real detector with NMS inside the graph. NanoDet-m (the
shared x2paddle Paddle program) + the GFL post-process + `multiclass_nms3`,
the op PaddleDetection's exports end in, saved as a Paddle inference model
(what `tools/build_sdk.py` then converts). Run in the tools venv (paddle 2.6):

  .venv-tools/bin/python tests/build_nms3_program.py --src ../shared/models/nanodet_m/paddle/model --out DIR

Outputs of the saved model (as a PaddleDetection export with NMS):
  0: `Out` [N, 6] float32 rows (class, score, x1, y1, x2, y2), boxes in
     input pixels divided by `scale_factor` (feed 1, 1 to stay in input pixels)
  1: `NmsRoisNum` [1] int32, the number of rows for the image
Inputs: `x2paddle_input_1` [1, 3, 416, 416] (NanoDet-m's input, see its
model card) and `scale_factor` [1, 2] (scale_y, scale_x), as PicoDet exports.

The post-process mirrors ppdet PicoHeadV2.forward_eval(export_post_process=True)
+ post_process: sigmoid scores (already in NanoDet-m's graph) transposed to
[1, C, N], boxes = centre -/+ integral(softmax(dist)) * stride, centres
(i + cell_offset) * stride, then multiclass_nms3(background_label=-1,
normalized=True, nms_eta=1). Boxes are clipped to the input before NMS, as
NanoDet's distance2bbox(max_shape) does (use --no-clip for PicoDet's way).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np



def multiclass_nms3(bboxes, scores, score_threshold, nms_top_k, keep_top_k, nms_threshold,
                    normalized=True, nms_eta=1.0, background_label=-1):
    """The static-graph branch of ppdet.modeling.ops.multiclass_nms (return_rois_num=True)."""
    from paddle.base.layer_helper import LayerHelper
    helper = LayerHelper("multiclass_nms3", **locals())
    output = helper.create_variable_for_type_inference(dtype=bboxes.dtype)
    index = helper.create_variable_for_type_inference(dtype="int32")
    nms_rois_num = helper.create_variable_for_type_inference(dtype="int32")
    helper.append_op(
        type="multiclass_nms3",
        inputs={"BBoxes": bboxes, "Scores": scores},
        attrs={"background_label": background_label, "score_threshold": score_threshold,
               "nms_top_k": nms_top_k, "nms_threshold": nms_threshold, "keep_top_k": keep_top_k,
               "nms_eta": nms_eta, "normalized": normalized},
        outputs={"Out": output, "Index": index, "NmsRoisNum": nms_rois_num})
    output.stop_gradient = True
    index.stop_gradient = True
    return output, nms_rois_num, index


def build(args) -> dict:
    import paddle
    import paddle.nn.functional as F

    paddle.enable_static()
    exe = paddle.static.Executor(paddle.CPUPlace())
    program, feed_names, fetch_vars = paddle.static.load_inference_model(args.src, exe)
    if len(fetch_vars) != 2 * len(args.strides):
        raise SystemExit(f"{args.src}: {len(fetch_vars)} outputs, expected class maps then box maps "
                         f"for strides {args.strides}")
    # x2paddle named the head outputs "save_infer_model/scale_K.tmp_0"; saving again would
    # create the same names for the new outputs: rename the old ones first
    block = program.global_block()
    names = [v.name for v in fetch_vars]
    for i, name in enumerate(names):
        block._rename_var(name, f"gfl_head_out_{i}")
    fetch_vars = [block.var(f"gfl_head_out_{i}") for i in range(len(names))]
    bins = args.reg_max + 1
    size = args.size
    n_levels = len(args.strides)
    with paddle.static.program_guard(program):
        image = program.global_block().var(feed_names[0])
        scale_factor = paddle.static.data("scale_factor", [1, 2], "float32")
        cls_maps, box_maps = fetch_vars[:n_levels], fetch_vars[n_levels:]
        scores = paddle.concat(cls_maps, axis=1)                       # [1, N, C], sigmoid already
        if args.cls_logits:
            scores = F.sigmoid(scores)
        scores = paddle.transpose(scores, [0, 2, 1])                    # [1, C, N]
        proj = paddle.assign(np.arange(bins, dtype=np.float32).reshape(bins, 1))
        boxes = []
        for stride, box in zip(args.strides, box_maps):
            h = w = -(-size // stride)
            n = h * w
            d = paddle.reshape(box, [1, n, 4, bins])
            d = F.softmax(d, axis=-1)
            d = paddle.reshape(paddle.matmul(d, proj), [1, n, 4])      # integral
            d = paddle.scale(d, scale=float(stride))
            ys, xs = np.mgrid[0:h, 0:w]
            centre = np.stack([(xs.ravel() + args.cell_offset) * stride,
                               (ys.ravel() + args.cell_offset) * stride], axis=1)
            centre = paddle.assign(centre.astype(np.float32).reshape(1, n, 2))
            lt, rb = paddle.split(d, 2, axis=-1)
            boxes.append(paddle.concat([centre - lt, centre + rb], axis=-1))
        boxes = paddle.concat(boxes, axis=1)                            # [1, N, 4]
        if not args.no_clip:
            boxes = paddle.clip(boxes, 0.0, float(size))
        sy, sx = paddle.split(scale_factor, 2, axis=-1)
        sf = paddle.reshape(paddle.concat([sx, sy, sx, sy], axis=-1), [-1, 1, 4])
        boxes = boxes / sf
        out, num, _ = multiclass_nms3(boxes, scores, args.score, args.nms_top_k, args.keep, args.nms)
    prefix = str(Path(args.out) / "inference_model" / "model")
    paddle.static.save_inference_model(prefix, [image, scale_factor], [out, num], exe, program=program)
    info = {"inputs": [image.name, "scale_factor"], "outputs": ["Out [N,6]", "NmsRoisNum [1] int32"],
            "score_threshold": args.score, "nms_threshold": args.nms, "nms_top_k": args.nms_top_k,
            "keep_top_k": args.keep, "strides": args.strides, "reg_max": args.reg_max,
            "cell_offset": args.cell_offset, "clip": not args.no_clip, "src": args.src,
            "paddle": paddle.__version__}
    (Path(args.out) / "build_info.json").write_text(json.dumps(info, indent=1))
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="path prefix of the Paddle inference model (no suffix)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--strides", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--reg-max", type=int, default=7)
    ap.add_argument("--cell-offset", type=float, default=0.5)
    ap.add_argument("--cls-logits", action="store_true", help="class maps are logits: add a sigmoid")
    ap.add_argument("--score", type=float, default=0.4)
    ap.add_argument("--nms", type=float, default=0.3)
    ap.add_argument("--nms-top-k", type=int, default=1000)
    ap.add_argument("--keep", type=int, default=100)
    ap.add_argument("--no-clip", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(build(args)))


if __name__ == "__main__":
    main()
