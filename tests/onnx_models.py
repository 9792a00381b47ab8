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


# ---- the blocks of the newer architectures (torchvision.ops.misc) ------------------------
class ConvNormAct(nn.Sequential):
    """torchvision's Conv2dNormActivation with any activation (None: conv and BN only)."""

    def __init__(self, cin, cout, kernel=3, stride=1, groups=1, act=nn.ReLU, eps=1e-5) -> None:
        layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups,
                            bias=False), nn.BatchNorm2d(cout, eps=eps)]
        super().__init__(*layers + ([act()] if act is not None else []))


class SqueezeExcitation(nn.Module):
    def __init__(self, channels, squeeze, act=nn.ReLU, gate=nn.Sigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = act()
        self.scale_activation = gate()

    def forward(self, x):
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


# ---- mobilenet_v3_small (torchvision.models.mobilenetv3) ---------------------------------
class V3Block(nn.Module):
    def __init__(self, cin, kernel, expanded, cout, se, hs, stride) -> None:
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        self.use_res_connect = stride == 1 and cin == cout
        layers = [] if expanded == cin else [ConvNormAct(cin, expanded, 1, act=act, eps=1e-3)]
        layers.append(ConvNormAct(expanded, expanded, kernel, stride, expanded, act, 1e-3))
        if se:
            layers.append(SqueezeExcitation(expanded, 8, gate=nn.Hardsigmoid))
        layers.append(ConvNormAct(expanded, cout, 1, act=None, eps=1e-3))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return y + x if self.use_res_connect else y


class MobileNetV3(nn.Module):
    # (in, kernel, expanded, out, SE, hardswish, stride): torchvision's small table, cut short
    SETTINGS = ((8, 3, 8, 8, True, False, 2), (8, 3, 16, 12, False, False, 2),
                (12, 5, 24, 12, True, True, 1))

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        features = [ConvNormAct(3, 8, 3, 2, act=nn.Hardswish, eps=1e-3)]
        features += [V3Block(*row) for row in self.SETTINGS]
        features.append(ConvNormAct(12, 24, 1, act=nn.Hardswish, eps=1e-3))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(24, 32), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(32, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ---- efficientnet_b0 (torchvision.models.efficientnet) -----------------------------------
class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth, row mode: the identity outside training or at p 0."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty([x.shape[0], 1, 1, 1]).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class MBConv(nn.Module):
    def __init__(self, expand, kernel, stride, cin, cout, sd_prob) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        hidden = cin * expand
        layers = [] if hidden == cin else [ConvNormAct(cin, hidden, 1, act=nn.SiLU, eps=1e-3)]
        layers += [ConvNormAct(hidden, hidden, kernel, stride, hidden, nn.SiLU, 1e-3),
                   SqueezeExcitation(hidden, max(1, cin // 4), act=nn.SiLU),
                   ConvNormAct(hidden, cout, 1, act=None, eps=1e-3)]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd_prob)

    def forward(self, x):
        y = self.block(x)
        return self.stochastic_depth(y) + x if self.use_res_connect else y


class EfficientNet(nn.Module):
    # (expand, kernel, stride, in, out, layers): b0's first stages, narrow
    SETTINGS = ((1, 3, 1, 8, 8, 1), (6, 3, 2, 8, 12, 2), (6, 5, 2, 12, 16, 1))

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        features = [ConvNormAct(3, 8, 3, 2, act=nn.SiLU, eps=1e-3)]
        blocks, done = sum(r[-1] for r in self.SETTINGS), 0
        for expand, kernel, stride, cin, cout, n in self.SETTINGS:
            stage = []
            for i in range(n):
                stage.append(MBConv(expand, kernel, stride if i == 0 else 1,
                                    cin if i == 0 else cout, cout, 0.2 * done / blocks))
                done += 1
            features.append(nn.Sequential(*stage))
        features.append(ConvNormAct(16, 64, 1, act=nn.SiLU, eps=1e-3))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ---- shufflenet_v2_x0_5 (torchvision.models.shufflenetv2) --------------------------------
def channel_shuffle(x, groups: int):
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, -1, h, w)


class ShuffleBlock(nn.Module):
    def __init__(self, cin, cout, stride) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(cin if stride > 1 else half, half, 1, bias=False), nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, repeats=(2, 2), channels=(8, 16, 32, 64), classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, channels[0], 3, 2, 1, bias=False),
                                   nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = channels[0]
        for i, (n, cout) in enumerate(zip(repeats, channels[1:]), start=2):
            setattr(self, f"stage{i}", nn.Sequential(
                ShuffleBlock(cin, cout, 2), *[ShuffleBlock(cout, cout, 1) for _ in range(n - 1)]))
            cin = cout
        self.conv5 = nn.Sequential(nn.Conv2d(cin, channels[-1], 1, bias=False),
                                   nn.BatchNorm2d(channels[-1]), nn.ReLU(inplace=True))
        self.fc = nn.Linear(channels[-1], classes)

    def forward(self, x):
        x = self.stage3(self.stage2(self.maxpool(self.conv1(x))))
        return self.fc(self.conv5(x).mean([2, 3]))


# ---- densenet121 (torchvision.models.densenet) -------------------------------------------
class DenseLayer(nn.Module):
    def __init__(self, cin, growth, bn_size) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features):
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, layers, cin, growth, bn_size) -> None:
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth, growth, bn_size))

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    def __init__(self, growth=4, blocks=(2, 2), init=8, bn_size=2, classes: int = 10) -> None:
        super().__init__()
        from collections import OrderedDict
        parts = [("conv0", nn.Conv2d(3, init, 7, 2, 3, bias=False)),
                 ("norm0", nn.BatchNorm2d(init)), ("relu0", nn.ReLU(inplace=True)),
                 ("pool0", nn.MaxPool2d(3, 2, 1))]
        c = init
        for i, n in enumerate(blocks):
            parts.append((f"denseblock{i + 1}", DenseBlock(n, c, growth, bn_size)))
            c += n * growth
            if i != len(blocks) - 1:
                parts.append((f"transition{i + 1}", nn.Sequential(OrderedDict([
                    ("norm", nn.BatchNorm2d(c)), ("relu", nn.ReLU(inplace=True)),
                    ("conv", nn.Conv2d(c, c // 2, 1, bias=False)),
                    ("pool", nn.AvgPool2d(2, 2))]))))
                c //= 2
        parts.append(("norm5", nn.BatchNorm2d(c)))
        self.features = nn.Sequential(OrderedDict(parts))
        self.classifier = nn.Linear(c, classes)

    def forward(self, x):
        x = nn.functional.relu(self.features(x))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


# ---- googlenet (torchvision.models.googlenet, aux_logits off) ----------------------------
class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return nn.functional.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, proj) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(cin, c1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, c3r, kernel_size=1),
                                     BasicConv2d(c3r, c3, kernel_size=3, padding=1))
        # torchvision's "5x5" branch is 3x3, as in its code
        self.branch3 = nn.Sequential(BasicConv2d(cin, c5r, kernel_size=1),
                                     BasicConv2d(c5r, c5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(cin, proj, kernel_size=1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = BasicConv2d(3, 8, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(8, 8, kernel_size=1)
        self.conv3 = BasicConv2d(8, 16, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(16, 4, 4, 8, 2, 4, 4)
        self.inception3b = Inception(20, 8, 4, 8, 2, 4, 4)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(24, 8, 4, 8, 2, 4, 4)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(24, classes)

    def forward(self, x):
        x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))
        x = self.inception4a(self.maxpool3(self.inception3b(self.inception3a(x))))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


# ---- regnet_y_400mf (torchvision.models.regnet) ------------------------------------------
class ResBottleneckBlock(nn.Module):
    def __init__(self, cin, cout, stride, group_width, se_ratio=0.25) -> None:
        super().__init__()
        from collections import OrderedDict
        self.proj = (ConvNormAct(cin, cout, 1, stride, act=None)
                     if cin != cout or stride != 1 else None)
        self.f = nn.Sequential(OrderedDict([
            ("a", ConvNormAct(cin, cout, 1)),
            ("b", ConvNormAct(cout, cout, 3, stride, cout // group_width)),
            ("se", SqueezeExcitation(cout, int(round(se_ratio * cin)))),
            ("c", ConvNormAct(cout, cout, 1, act=None))]))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.f(x)
        return self.activation((x if self.proj is None else self.proj(x)) + y)


class RegNet(nn.Module):
    def __init__(self, widths=(8, 16), depths=(1, 2), group_width=4, classes: int = 10) -> None:
        super().__init__()
        from collections import OrderedDict
        self.stem = ConvNormAct(3, 8, 3, 2)
        stages, cin = [], 8
        for i, (w, d) in enumerate(zip(widths, depths), start=1):
            blocks = [(f"block{i}-{j}", ResBottleneckBlock(cin if j == 0 else w, w,
                                                            2 if j == 0 else 1, group_width))
                      for j in range(d)]
            stages.append((f"block{i}", nn.Sequential(OrderedDict(blocks))))
            cin = w
        self.trunk_output = nn.Sequential(OrderedDict(stages))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.trunk_output(self.stem(x))), 1))


# ---- mnasnet0_5 (torchvision.models.mnasnet) ---------------------------------------------
class MnasBlock(nn.Module):
    def __init__(self, cin, cout, kernel, stride, expand) -> None:
        super().__init__()
        mid = cin * expand
        self.apply_residual = cin == cout and stride == 1
        self.layers = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid, momentum=0.0003),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid, momentum=0.0003), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout, momentum=0.0003))

    def forward(self, x):
        return self.layers(x) + x if self.apply_residual else self.layers(x)


class MNASNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        m = 0.0003
        self.layers = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8, momentum=m),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8, momentum=m),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8, momentum=m),
            nn.Sequential(MnasBlock(8, 12, 3, 2, 3), MnasBlock(12, 12, 3, 1, 3)),
            nn.Sequential(MnasBlock(12, 16, 5, 2, 3)),
            nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32, momentum=m),
            nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x):
        return self.classifier(self.layers(x).mean([2, 3]))


# ---- resnext50_32x4d (torchvision.models.resnet, groups and width_per_group) -------------
class GroupedBottleneck(Bottleneck):
    """Bottleneck with conv2 in 4 groups of 2 x planes / 4 channels (32x4d, shrunk)."""

    def __init__(self, cin: int, width: int, stride: int = 1, downsample=None) -> None:
        super().__init__(cin, width, stride, downsample)
        inner = width * 2
        self.conv1 = nn.Conv2d(cin, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride, padding=1, groups=4, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, width * 4, 1, bias=False)


def resnext50_32x4d() -> ResNet:
    return ResNet(GroupedBottleneck, [1, 1, 1, 1], widths=(4, 8, 8, 16))


# name -> (constructor, input shape of one sample, the --freeze glob its checks use)
MORE_MODELS = {
    "mobilenet_v3_small": (MobileNetV3, (3, 32, 32), "features.1.*"),
    "efficientnet_b0": (EfficientNet, (3, 32, 32), "features.2.0.*"),
    "shufflenet_v2_x0_5": (ShuffleNetV2, (3, 64, 64), "stage2.0.*"),
    "densenet121": (DenseNet, (3, 32, 32), "features.denseblock1.*"),
    "googlenet": (GoogLeNet, (3, 64, 64), "inception3a.*"),
    "regnet_y_400mf": (RegNet, (3, 32, 32), "trunk_output.block1.*"),
    "mnasnet0_5": (MNASNet, (3, 32, 32), "layers.8.*"),
    "resnext50_32x4d": (resnext50_32x4d, (3, 64, 64), "layer2.*"),
}


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
           dynamo: bool = False, seed: int = 0, opset: int = 17, drop: bool = False
           ) -> nn.Module:
    """Export model `name` with random weights (and random BN statistics) to `path`; returns
    the torch module (in eval mode). A training export sets the dropout and stochastic-depth
    probabilities to 0 unless `drop` keeps them (their random draws then are in the file)."""
    make, shape = MODELS[name] if name in MODELS else MORE_MODELS[name][:2]
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
            if isinstance(m, (nn.Dropout, StochasticDepth)) and not drop:
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
