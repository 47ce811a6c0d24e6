"""Send an image to ``semask-serve`` (Triton, HTTP or gRPC) and write the label map as a PNG.

    python examples/client.py --image street.jpg --out street_labels.png               # HTTP :8000
    python examples/client.py --image street.jpg --out labels.png --url localhost:8001 --protocol grpc

Needs ``tritonclient[http,grpc]`` and OpenCV. The PNG holds the class index per pixel (8-bit, or 16-bit
with more than 256 classes), at the image's own size — the same as ``semask-infer``'s NAME_labels.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import cv2
import numpy as np


def segment(image_rgb: np.ndarray, url: str = "localhost:8000", protocol: str = "http", model: str = "semask",
            timeout_s: float = 60.0) -> np.ndarray:
    """uint8 (H, W, 3) RGB image → int32 (H, W) labels from the server."""
    if protocol == "grpc":
        import tritonclient.grpc as tc

        client = tc.InferenceServerClient(url)
    else:
        import tritonclient.http as tc

        client = tc.InferenceServerClient(url, network_timeout=timeout_s, connection_timeout=timeout_s)
    batch = np.ascontiguousarray(image_rgb[None])
    inp = tc.InferInput("image", list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch)
    if protocol == "grpc":
        result = client.infer(model, [inp], outputs=[tc.InferRequestedOutput("labels")], client_timeout=timeout_s)
    else:
        result = client.infer(model, [inp], outputs=[tc.InferRequestedOutput("labels")])
    return result.as_numpy("labels")[0]


def _check_out(out: str) -> str | None:
    """What is wrong with ``--out`` (checked before the request), or None."""
    folder = os.path.dirname(os.path.abspath(out))
    if not out.lower().endswith(".png"):
        return f"--out must name a .png file (the labels are written as PNG), got {out}"
    if os.path.isdir(out):
        return f"--out {out} is a folder; name the PNG file to write"
    if not os.path.isdir(folder):
        return f"the folder of --out does not exist: {folder} (create it first)"
    return None


def _write_png(path: str, labels: np.ndarray) -> None:
    """Write under a temporary name in the same folder, then rename (nothing half-written is left)."""
    png = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        if not cv2.imwrite(tmp, png):
            raise OSError("the PNG encoder failed")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", required=True, help="an image file")
    p.add_argument("--out", required=True, help="label PNG to write")
    p.add_argument("--url", default="localhost:8000", help="server address (default: localhost:8000, HTTP)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--model", default="semask", help="model name (default: semask)")
    args = p.parse_args(argv)
    problem = _check_out(args.out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if bgr is None:
        print(f"error: cannot read {args.image}", file=sys.stderr)
        return 2
    try:
        labels = segment(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), args.url, args.protocol, args.model)
    except ImportError as exc:
        print(f"error: {exc.name or exc} is missing: pip install 'tritonclient[http,grpc]'", file=sys.stderr)
        return 2
    except Exception as exc:  # connection refused, timeouts, the server's own errors (tritonclient's exception types)
        print(f"error: the request to {args.url} ({args.protocol}) failed: {' '.join(str(exc).split())}",
              file=sys.stderr)
        return 2
    try:
        _write_png(args.out, labels)
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({labels.shape[0]}x{labels.shape[1]}, classes {sorted(np.unique(labels).tolist())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
