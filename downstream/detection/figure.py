"""A picture of detections on a few test images (matplotlib, written into the run directory)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pretext.data.images import BadImage, load_rgb


def draw_detections(path: str | Path, records, shown: list, classes: list[str], min_score: float = 0.2,
                    per_image: int = 4) -> None:
    """``shown``: [(image id, boxes [D, 4], scores [D], labels [D])] from ``engine.evaluate``;
    each panel shows the ground truth (dashed white) and the ``per_image`` best
    detections scoring at least ``min_score`` (coloured by class, with class and score)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pretext.engine.checkpoint import atomic_write

    by_id = {r.image_id: r for r in records}
    shown = [s for s in shown if s[0] in by_id]
    if not shown:
        return
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(classes), 2)))
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.4), squeeze=False)
    for ax, (image_id, boxes, scores, labels) in zip(axes[0], shown):
        rec = by_id[image_id]
        try:
            ax.imshow(np.asarray(load_rgb(rec.path)))
        except BadImage:
            continue
        for b in rec.boxes:
            ax.add_patch(plt.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec="white", ls="--", lw=1))
        for b, s, lab in list(zip(boxes.tolist(), scores.tolist(), labels.tolist()))[:per_image]:
            if s < min_score:
                break
            c = colours[lab - 1]
            ax.add_patch(plt.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec=c, lw=1.5))
            ax.text(b[0], b[1], f"{classes[lab - 1]} {s:.2f}", color="black", fontsize=7, va="bottom",
                    bbox={"facecolor": c, "alpha": 0.8, "pad": 1, "lw": 0})
        ax.set_title(image_id, fontsize=8)
        ax.axis("off")
    fig.suptitle("Fast R-CNN detections (dashed: ground truth)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
