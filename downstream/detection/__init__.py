"""Fast R-CNN detection on PASCAL VOC 2007 (DESIGN §4): ``colorbench detect`` / ``det-eval``.

proposals.py  selective search per image (cached on disk) or a user's proposal file
data.py       VOC images + objects + proposals, scaling / flipping, RoI sampling
model.py      the trunk + RoI pooling + fc6 / fc7 + class scores and box regression
engine.py     train_one_epoch, evaluate (detections per class), the loss
voc_eval.py   devkit result files, the devkit's AP, the COCO bridge, ``det-eval``
main.py       the config, get_dataset, main (``detect``), records and the picture
"""
