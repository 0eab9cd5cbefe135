import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from dist_darts.spaces.cnn import genotype as gt
from dist_darts.spaces.cnn.model import NetworkCIFAR, NetworkImageNet, count_parameters
from dist_darts.spaces.cnn.ops import OPS, FactorizedReduce
from helpers import env_for_subprocess


def test_darts_v2_cifar_parameter_count_matches_original():
    net = NetworkCIFAR(36, 10, 20, True, gt.DARTS_V2)
    assert count_parameters(net) == 3_349_342


def test_darts_v2_imagenet_parameter_count_matches_original():
    net = NetworkImageNet(48, 1000, 14, True, gt.DARTS_V2)
    assert count_parameters(net) == 4_718_752


@pytest.mark.parametrize("name", ["DARTS_V1", "DARTS_V2", "PC_DARTS", "NASNet", "AmoebaNet"])
def test_cifar_shapes_and_aux(name):
    net = NetworkCIFAR(8, 10, 5, True, name)
    net.drop_path_prob = 0.2
    logits, aux = net.train()(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    logits, aux = net.eval()(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and aux is None


def test_imagenet_shapes():
    net = NetworkImageNet(8, 7, 5, True, gt.DARTS_V2).train()
    logits, aux = net(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 7) and aux.shape == (2, 7)


def test_drop_path_only_in_training_and_spares_identity():
    torch.manual_seed(0)
    net = NetworkCIFAR(8, 10, 3, False, gt.DARTS_V2)
    x = torch.randn(4, 3, 32, 32)
    net.eval()
    net.drop_path_prob = 0.9
    a, _ = net(x)
    net.drop_path_prob = 0.0
    b, _ = net(x)
    assert torch.equal(a, b)  # eval ignores drop path
    net.train()
    net.drop_path_prob = 0.5
    torch.manual_seed(1)
    c, _ = net(x)
    torch.manual_seed(1)
    d, _ = net(x)
    net.drop_path_prob = 0.0
    e, _ = net(x)
    assert torch.equal(c, d) and not torch.allclose(c, e)


def test_module_names_follow_the_original():
    keys = set(NetworkCIFAR(8, 10, 5, True, gt.DARTS_V2).state_dict())
    for k in ["stem.0.weight", "stem.1.running_mean", "cells.0.preprocess0.op.1.weight",
              "cells.0._ops.0.op.1.weight", "cells.0._ops.0.op.7.running_var",
              "cells.2.preprocess0.conv_1.weight",
              "auxiliary_head.features.2.weight", "auxiliary_head.classifier.bias", "classifier.weight"]:
        assert k in keys, k


def test_every_op_keeps_or_halves_the_resolution():
    x = torch.randn(2, 8, 16, 16)
    for name, make in OPS.items():
        for stride in (1, 2):
            assert make(8, stride, True)(x).shape == (2, 8, 16 // stride, 16 // stride), (name, stride)


def test_rejects_malformed_genotype():
    bad = gt.Genotype([("sep_conv_3x3", 0), ("bogus", 1)], [2], [("skip_connect", 0), ("skip_connect", 1)], [2])
    with pytest.raises(gt.GenotypeError, match="unknown op 'bogus'"):
        NetworkCIFAR(8, 10, 3, False, bad)


def test_factorized_reduce_matches_the_original_stride_2_convs():
    op = FactorizedReduce(6, 8).double()
    h = torch.relu(torch.randn(2, 6, 12, 12, dtype=torch.float64))
    original = torch.cat([F.conv2d(h, op.conv_1.weight, stride=2),
                          F.conv2d(h[:, :, 1:, 1:], op.conv_2.weight, stride=2)], dim=1)
    torch.testing.assert_close(op.reduce(h), original, rtol=0, atol=1e-12)


def test_channels_last_imagenet_network_with_few_channels_trains_on_cpu():
    """oneDNN's avx512 backward of a channels_last 1x1 stride-2 conv with < 16 input channels corrupted the heap;
    FactorizedReduce avoids that kernel. Run in a child with glibc's heap checks so corruption fails the test."""
    code = ("import torch; from dist_darts.spaces.cnn.model import NetworkImageNet\n"
            "net = NetworkImageNet(8, 3, 3, True, 'DARTS_V2').to(memory_format=torch.channels_last).train()\n"
            "for _ in range(3):\n"
            "    logits, aux = net(torch.randn(4, 3, 224, 224))\n"
            "    (logits.sum() + aux.sum()).backward()\n")
    done = subprocess.run([sys.executable, "-c", code], env={**env_for_subprocess(), "MALLOC_CHECK_": "3"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_drop_path_prob_is_a_float_attribute_kept_out_of_the_state_dict():
    net = NetworkCIFAR(4, 10, 3, False, gt.DARTS_V2)
    net.drop_path_prob = 0.2
    assert isinstance(net.drop_path_prob, float) and net.drop_path_prob == 0.2
    assert not any("drop_path" in k for k in net.state_dict())
    net.double()
    assert net.drop_path_prob == 0.2


def test_compiled_network_does_not_recompile_when_drop_path_prob_changes():
    """--compile with the retrain's drop_path_prob schedule: one graph for every epoch (a float attribute was
    baked into the graph: a recompile per epoch, then eager after 8)."""
    import torch._dynamo
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    net = NetworkCIFAR(4, 10, 3, False, gt.DARTS_V2).train()
    compiled = torch.compile(net, backend="eager")  # dynamo's graphs and guards, without inductor's codegen
    x = torch.randn(4, 3, 16, 16)
    outputs = []
    for p in (0.0, 0.3, 0.6):
        net.drop_path_prob = p
        torch.manual_seed(1)
        outputs.append(compiled(x)[0])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]
    net.drop_path_prob = 0.0
    assert torch.equal(outputs[0], net(x)[0])  # the value is read at run time
    assert not torch.allclose(outputs[0], outputs[2])


def test_weight_ema_is_torchs_ema_with_a_host_counter():
    """train.WeightEMA against torch's AveragedModel(use_buffers=True, get_ema_multi_avg_fn): the same average of
    every parameter and floating-point buffer, through a save and load of its state in the middle."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    from dist_darts.train import WeightEMA
    torch.manual_seed(0)
    net = NetworkCIFAR(8, 10, 4, False, gt.DARTS_V2)
    reference = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    ema = WeightEMA(net, 0.9)
    optimizer = torch.optim.SGD(net.parameters(), 0.1)
    for step in range(4):
        net(torch.randn(4, 3, 32, 32))[0].sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        reference.update_parameters(net)
        ema.update_parameters(net)
        if step == 1:
            restored = WeightEMA(net, 0.9)
            restored.load_state_dict(ema.state_dict())
            ema = restored
    assert ema.updates == 4
    theirs = reference.module.state_dict()
    for name, value in ema.module.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, theirs[name], rtol=0, atol=0)
