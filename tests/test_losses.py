"""InfoNCE against a hand computation, with hard negatives and in-batch negatives."""

import math

import torch

from reasoning_embed.training.losses import info_nce, info_nce_with_grad


def test_info_nce_equals_hand_computation():
    torch.manual_seed(0)
    B, G, D, T = 3, 4, 8, 0.02
    q = torch.nn.functional.normalize(torch.randn(B, D), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(B * G, D), dim=-1)
    loss, stats = info_nce(q, p, G, T)
    total = 0.0
    for i in range(B):
        scores = [float(q[i] @ p[j]) / T for j in range(B * G)]  # positive, its 3 hard negs, all others
        m = max(scores)
        lse = m + math.log(sum(math.exp(s - m) for s in scores))
        total += lse - scores[i * G]
    assert abs(loss.item() - total / B) < 1e-4
    assert 0.0 <= stats["acc"].item() <= 1.0


def test_label_offset_selects_this_devices_block():
    torch.manual_seed(1)
    q = torch.randn(2, 4)
    p_local = torch.randn(2 * 2, 4)
    p_other = torch.randn(2 * 2, 4)
    loss_rank1, _ = info_nce(q, torch.cat([p_other, p_local]), 2, 0.1, label_offset=4)
    # the same scores with the blocks swapped and offset 0 must give the same loss
    loss_rank0, _ = info_nce(q, torch.cat([p_local, p_other]), 2, 0.1, label_offset=0)
    assert abs(loss_rank1.item() - loss_rank0.item()) < 1e-5


def test_perfect_embeddings_reach_zero_loss_and_full_accuracy():
    q = torch.eye(4)
    p = torch.zeros(8, 4)
    p[0::2] = torch.eye(4)  # positives identical to queries, negatives orthogonal-ish zeros
    loss, stats = info_nce(q, p, 2, 0.02)
    assert loss.item() < 1e-6 and stats["acc"].item() == 1.0


def test_chunked_loss_gradient_equals_full_autograd():
    """The gradient-caching loss (query chunks, never the full score matrix) equals autograd of info_nce,
    with a label offset (this device's block of gathered passages) and a last chunk shorter than the rest."""
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(37, 16, generator=g), dim=-1).requires_grad_()
    p = torch.nn.functional.normalize(torch.randn(2 * 37 * 4, 16, generator=g), dim=-1).requires_grad_()
    loss, stats = info_nce(q, p, 4, 0.05, label_offset=37 * 4)
    gq, gp = torch.autograd.grad(loss, [q, p])
    loss_c, stats_c, gq_c, gp_c = info_nce_with_grad(q.detach(), p.detach(), 4, 0.05, label_offset=37 * 4,
                                                     chunk_size=8)
    assert torch.allclose(loss_c, loss, atol=1e-6)
    assert torch.allclose(gq_c, gq, atol=1e-6) and torch.allclose(gp_c, gp, atol=1e-6)
    assert gp_c[: 37 * 4].abs().sum() > 0  # the other device's passages are negatives too
    for k in stats:
        assert torch.allclose(torch.as_tensor(stats_c[k]), stats[k], atol=1e-6), k
