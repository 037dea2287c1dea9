"""Model factory: torchvision backbones, MobileNet-V1 (used in the paper, absent from
torchvision) and a small ResNet for 32-px data. `num_classes` comes from the dataset."""

from __future__ import annotations

import torch
from torch import nn


class Fp32Linear(nn.Linear):
    """A classifier head that runs in fp32 under autocast. The per-sample losses that rank
    samples for selection come from these logits: in bf16 each carries ~1e-2 of quantisation at
    |logit| ~ 10, which reorders samples near the keep threshold. The head is small, so the cost
    is small."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward(x.float())


def fp32_classifier(model: nn.Module) -> nn.Module:
    """Make the model's last Linear layer an Fp32Linear, in place. Its class changes, not its
    parameters or their names, so checkpoints and exported weights are unchanged."""
    last = None
    for module in model.modules():
        if type(module) is nn.Linear:
            last = module
    if last is not None:
        last.__class__ = Fp32Linear
    return model


def build_classifier(name: str, num_classes: int, zero_gamma: bool = True) -> nn.Module:
    """The network as training runs it, fp32 head included: what the trainer trains and scores,
    and what `dap-hvd evaluate` rebuilds (evaluate.build_eval_model), so both compute the same logits."""
    return fp32_classifier(build_model(name, num_classes, zero_gamma=zero_gamma))


def build_model(name: str, num_classes: int, zero_gamma: bool = True) -> nn.Module:
    if name == "mobilenet_v1":
        return MobileNetV1(num_classes)
    if name == "resnet_small":
        return SmallResNet(num_classes, zero_gamma=zero_gamma)
    import torchvision.models as tvm  # about a second to import: only for the models that need it

    if name.startswith("resnet"):
        # zero-gamma: the last BN of each residual block starts at 0, so blocks start as identity.
        return getattr(tvm, name)(weights=None, num_classes=num_classes, zero_init_residual=zero_gamma)
    if name in ("densenet121", "densenet169", "mobilenet_v2"):
        return getattr(tvm, name)(weights=None, num_classes=num_classes)
    raise ValueError(f"unknown model {name!r}")


class MobileNetV1(nn.Module):
    """MobileNet-V1 1.0 (Howard et al. 2017): depthwise-separable convolutions, 224 px."""

    _CFG = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]

    def __init__(self, num_classes: int, width: float = 1.0):
        super().__init__()

        def conv_bn(cin, cout, stride, groups=1, k=3):
            return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                    nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        c = int(32 * width)
        layers = conv_bn(3, c, 2)
        for out, stride in self._CFG:
            out = int(out * width)
            layers += conv_bn(c, c, stride, groups=c) + conv_bn(c, out, 1, k=1)
            c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet (He et al. 2016, sec. 4.2) for 32-px inputs, 3 stages of n blocks."""

    def __init__(self, num_classes: int, n: int = 1, widths=(16, 32, 64), zero_gamma: bool = True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(n):
                blocks.append(_Block(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_gamma:
            for b in blocks:
                nn.init.zeros_(b.bn2.weight)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def param_groups(model: nn.Module, weight_decay: float, no_bias_decay: bool) -> list[dict]:
    """No-bias-decay (Bag of Tricks 3.1): biases and BN/normalization parameters get no decay."""
    if not no_bias_decay:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
