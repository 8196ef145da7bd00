"""A stack of wide 3x3 convolutions: the shape where 2:4 sparse Tensor Core kernels pay off if they pay off anywhere
(TensorRT's guidance: input and output channels >= 256, 3x3 rather than 1x1, INT8). Used by the 2:4 benchmark
(`benchmarks/README.md`, issue 13) as ``model=custom model.path=benchmarks/models/wide_convs.py
model.class_name=WideConvs model.input_kind=image model.input_shape=[512,28,28]``.
"""

from torch import nn


class WideConvs(nn.Module):
    """``depth`` blocks of Conv3x3(width -> width) + BatchNorm + ReLU at the input's resolution, then a global
    average pool and a linear classifier."""

    def __init__(self, width: int = 512, depth: int = 8, num_classes: int = 1000):
        super().__init__()
        layers = []
        for _ in range(depth):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))
