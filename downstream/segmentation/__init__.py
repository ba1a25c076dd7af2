"""FCN semantic segmentation on PASCAL VOC 2012 (DESIGN §4, the PASCAL table's "seg" column).

``train`` (``colorbench segment``: get_dataset / train_one_epoch / evaluate / main),
``model`` (FCN-32s / 16s / 8s on any trunk's taps), ``data`` (joint image + mask
transforms), ``outputs`` (palette PNGs, the side-by-side picture), ``seg_eval``
(``colorbench seg-eval``: scores a folder of predictions). The reader is
``pretext.data.voc.VocSegmentation``; the confusion matrix ``downstream.metrics``.
"""
