"""CNN3, the CPU tracks' own small net: size counted by hand, the [0,1] contract, and the no-BN variant."""

import torch

from rfbench.models import create_model


def test_cnn3_parameter_count_matches_a_hand_count():
    # conv 1->16 (144) + BN (32); conv 16->32 (4,608) + BN (64); conv 32->64 (18,432) + BN (128);
    # fc 64*3*3->128 (73,728 + 128); head 128->10 (1,280 + 10)
    net = create_model("cnn3", num_classes=10, in_channels=1)
    assert sum(p.numel() for p in net.parameters()) == 176 + 4672 + 18560 + 73856 + 1290
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_cnn3_without_batch_norm_has_conv_biases_and_no_bn():
    net = create_model("cnn3", num_classes=10, in_channels=1, bn=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert sum(p.numel() for p in net.parameters()) == (144 + 16) + (4608 + 32) + (18432 + 64) + 73856 + 1290
