"""Published reference numbers (DESIGN §5), as records shaped like a run's records.

These are other people's results, copied as facts from the papers; tables mark them
``published`` with their source and never present them as runs of this suite.
"""
from __future__ import annotations

ZHANG16 = "Zhang, Isola, Efros, ECCV 2016 (Tables 1-4)"
SPLITBRAIN17 = "Zhang, Isola, Efros, CVPR 2017 (Split-Brain, Tables 2-4)"
GOYAL19 = "Goyal, Mahajan, Gupta, Misra, ICCV 2019 (Table 2)"
LARSSON17 = "Larsson, Maire, Shakhnarovich, CVPR 2017"

ALEXNET_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")

# ImageNet-1k linear probes, AlexNet, top-1 % (conv1..conv5)
IMAGENET_PROBE = {
    "ImageNet labels": ((19.3, 36.3, 44.2, 48.3, 50.5), SPLITBRAIN17),
    "Gaussian": ((11.6, 17.1, 16.9, 16.3, 14.1), SPLITBRAIN17),
    "Krähenbühl et al.": ((17.5, 23.0, 24.5, 23.2, 20.6), SPLITBRAIN17),
    "Doersch et al.": ((16.2, 23.3, 30.2, 31.7, 29.6), SPLITBRAIN17),
    "Pathak et al.": ((14.1, 20.7, 21.0, 19.8, 15.5), SPLITBRAIN17),
    "Donahue et al.": ((17.7, 24.5, 31.0, 29.9, 28.0), SPLITBRAIN17),
    "Zhang et al. (colorization)": ((12.5, 24.5, 30.4, 31.5, 30.3), SPLITBRAIN17),
    "Split-Brain (Zhang 2017)": ((17.7, 29.3, 35.4, 35.2, 32.8), SPLITBRAIN17),
}

# Places205 linear probes, AlexNet, top-1 %
PLACES_PROBE = {
    "Places labels": ((22.1, 35.1, 40.2, 43.3, 44.6), SPLITBRAIN17),
    "Gaussian": ((15.7, 20.3, 19.8, 19.1, 17.5), SPLITBRAIN17),
    "Krähenbühl et al.": ((21.4, 26.2, 27.1, 26.1, 24.0), SPLITBRAIN17),
    "Zhang et al. (colorization)": ((16.0, 25.7, 29.6, 30.3, 29.7), SPLITBRAIN17),
    "Split-Brain (Zhang 2017)": ((21.3, 30.7, 34.0, 34.1, 32.5), SPLITBRAIN17),
}

# PASCAL VOC: classification fc6-8 mAP / classification all mAP / detection mAP / segmentation mIU
PASCAL_PROTOCOLS = ("cls_fc6-8", "cls_all", "det", "seg")
PASCAL = {
    "Zhang et al. (colorization)": ((61.5, 65.9, 46.9, 35.6), ZHANG16),
    "ImageNet labels": ((78.9, 79.9, 56.8, 48.0), ZHANG16),
    "Gaussian": ((None, 53.3, 43.4, 19.8), ZHANG16),
    "Krähenbühl et al.": ((39.2, 56.6, 45.6, 32.6), ZHANG16),
    "Doersch et al.": ((55.1, 65.3, 51.1, None), ZHANG16),
    "Pathak et al.": ((None, 56.5, 44.5, 29.7), ZHANG16),
    "Donahue et al.": ((52.3, 60.1, 46.9, 35.2), ZHANG16),
    "Split-Brain (Zhang 2017)": ((63.0, 67.1, 46.7, 36.0), SPLITBRAIN17),
    "Larsson et al. 2017": ((None, 65.9, None, 38.4), LARSSON17),
}

# Goyal et al. 2019: colorization pretrained on ImageNet-1k, best-layer linear top-1 %
GOYAL_BEST_LAYER = {"alexnet_cc": 30.39, "resnet50_cc": 40.11}

# Colorization on ImageNet ctest10k: VGG-16 top-1 % on recolorized images
CLASSIFIER_TOP1 = {"Ground truth": 68.3, "Gray": 52.7, "Larsson et al.": 59.4, "Zhang et al. (full)": 56.0}
# the colorizer behind each Table 1 row ('-' where there is none)
TABLE1_COLORIZER = {"Ground truth": "-", "Gray": "-", "Larsson et al.": "hypercolumn VGG", "Zhang et al. (full)": "vgg_cc"}
AMT_FOOLED_FULL = 32.0  # % of trials where people took the full method's output for real


def _row(suite, method, protocol, dataset, layer, metric, value, source, encoder="alexnet"):
    return {"suite": suite, "method": method, "encoder": encoder, "protocol": protocol, "dataset": dataset,
            "split": "val", "layer": layer, "metric": metric, "value": value, "source": source,
            "run_id": "published", "date": ""}


def published_records() -> list[dict]:
    """All reference numbers as flat records with ``run_id == 'published'``."""
    rows = []
    for dataset, table in (("imagenet", IMAGENET_PROBE), ("places205", PLACES_PROBE)):
        for method, (values, source) in table.items():
            rows += [_row("probe", method, "linear_probe", dataset, layer, "top1", v, source)
                     for layer, v in zip(ALEXNET_LAYERS, values)]
    for method, (values, source) in PASCAL.items():
        rows += [_row("pascal", method, protocol, "voc2007" if protocol != "seg" else "voc2012", "", 
                      "mIU" if protocol == "seg" else "mAP", v, source)
                 for protocol, v in zip(PASCAL_PROTOCOLS, values) if v is not None]
    for encoder, v in GOYAL_BEST_LAYER.items():
        rows.append(_row("probe", "Goyal et al. 2019 colorization", "linear_probe_best_layer", "imagenet", "best",
                         "top1", v, GOYAL19, encoder=encoder))
    for method, v in CLASSIFIER_TOP1.items():
        rows.append(_row("colorization", method, "table1", "imagenet-ctest10k", "", "classifier_top1", v, ZHANG16,
                         encoder=TABLE1_COLORIZER[method]))
    rows.append(_row("colorization", "Zhang et al. (full)", "table1", "imagenet-ctest10k", "", "amt_fooled_pct",
                     AMT_FOOLED_FULL, ZHANG16, encoder="vgg_cc"))
    return rows
