"""torchvision's architectures written again at small width and depth, for the ONNX import
tests (torchvision itself does not install beside the torch used here).

Each class follows torchvision's module structure and names (`conv1`, `bn1`, `layer1.0.conv1`,
`features.3.conv.0.0`, `classifier.1`), so exported initializers carry the names a user of
torchvision sees; widths, block counts and the input size are shrunk to keep tests fast.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch loads: see torch_oracle

import torch  # noqa: E402
from torch import nn  # noqa: E402


# ---- resnet (torchvision.models.resnet) --------------------------------------------------
def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block, layers, widths=(8, 16, 32, 64), classes: int = 10) -> None:
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        self.layer1 = self._make(block, widths[0], layers[0])
        self.layer2 = self._make(block, widths[1], layers[1], 2)
        self.layer3 = self._make(block, widths[2], layers[2], 2)
        self.layer4 = self._make(block, widths[3], layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, classes)

    def _make(self, block, width, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != width * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, width * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(width * block.expansion))
        layers = [block(self.inplanes, width, stride, downsample)]
        self.inplanes = width * block.expansion
        layers += [block(self.inplanes, width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18() -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2])


def resnet50() -> ResNet:
    """Bottleneck blocks at a quarter of resnet50's depth in each stage, narrow."""
    return ResNet(Bottleneck, [1, 2, 1, 1], widths=(4, 8, 8, 16))


# ---- mobilenet_v2 (torchvision.models.mobilenetv2) ---------------------------------------
class Conv2dNormActivation(nn.Sequential):
    def __init__(self, cin, cout, kernel=3, stride=1, groups=1) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups,
                                   bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers = []
        if expand != 1:
            layers.append(Conv2dNormActivation(cin, hidden, kernel=1))
        layers += [Conv2dNormActivation(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    # (expand t, channels c, repeats n, stride s), torchvision's table cut short and narrow
    SETTINGS = ((1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2))

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        features = [Conv2dNormActivation(3, 8, stride=2)]
        cin = 8
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(Conv2dNormActivation(cin, 32, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2() -> MobileNetV2:
    return MobileNetV2()


# ---- squeezenet1_0 (torchvision.models.squeezenet) ---------------------------------------
class Fire(nn.Module):
    def __init__(self, cin, squeeze, e1, e3) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 7, stride=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(16, 4, 8, 8), Fire(16, 4, 8, 8),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(16, 8, 16, 16))
        final = nn.Conv2d(32, classes, 1)
        self.classifier = nn.Sequential(nn.Dropout(0.5), final, nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def squeezenet1_0() -> SqueezeNet:
    return SqueezeNet()


# ---- vgg11 (torchvision.models.vgg, cfg "A") ---------------------------------------------
class VGG(nn.Module):
    CFG = (8, "M", 16, "M", 32, 32, "M")

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        layers, cin = [], 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            nn.Linear(cin * 4, 32), nn.ReLU(True), nn.Dropout(),
            nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, classes))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg11() -> VGG:
    return VGG()


# ---- an MLP ------------------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self, features: int = 20, hidden: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.LeakyReLU(0.1)
        self.fc3 = nn.Linear(hidden, hidden)
        self.act3 = nn.Sigmoid()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.act3(self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))))


def mlp() -> MLP:
    return MLP()


# name -> (constructor, input shape of one sample)
MODELS = {
    "mlp": (mlp, (20,)),
    # 64 x 64 leaves layer4 2 x 2 cells: batch statistics over 2 x 1 x 1 values would make
    # float32 rounding visible (both bwplan and onnxruntime are 1e-3 off float64 there)
    "resnet18": (resnet18, (3, 64, 64)),
    "resnet50": (resnet50, (3, 64, 64)),
    "mobilenet_v2": (mobilenet_v2, (3, 32, 32)),
    "squeezenet1_0": (squeezenet1_0, (3, 35, 35)),
    "vgg11": (vgg11, (3, 32, 32)),
}


def export(name: str, path: str, batch: int = 2, train: bool = False, dynamic: bool = False,
           dynamo: bool = False, seed: int = 0, opset: int = 17) -> nn.Module:
    """Export model `name` with random weights (and random BN statistics) to `path`; returns
    the torch module (in eval mode)."""
    make, shape = MODELS[name]
    torch.manual_seed(seed)
    model = make()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(batch, *shape)
    kwargs = {}
    if dynamic:
        if dynamo:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("N", min=1, max=64)},)
        else:
            kwargs["dynamic_axes"] = {"input": {0: "N"}, "output": {0: "N"}}
    if train:
        # dropout masks are random: a training-mode comparison needs p = 0 (exported as a
        # Dropout of ratio 0)
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        model.train()
        if dynamo:
            kwargs["optimize"] = False    # the optimizer folds BN even in training mode
        else:
            kwargs.update(training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    else:
        model.eval()
    torch.onnx.export(model, (x,), path, input_names=["input"], output_names=["output"],
                      opset_version=opset, dynamo=dynamo, **kwargs)
    return model.eval()
