"""A literal, unoptimised re-implementation of LeRobot 0.6.1's SmolVLA layer loop (the fixture README's step 7-8).

Prefix and suffix run jointly through every layer with one 2-D mask over their concatenation, eager attention in
float32 with masked logits set to the float32 minimum, the expert/VLM layer pairing and SA/CA schedule decided per
layer exactly as LeRobot's `forward` does. smolvla's optimised path (prefix cache, SDPA, skipped work) must compute
the same velocities for every configuration; tests compare the two.
"""

import torch
import torch.nn.functional as F  # noqa: N812

from smolvla.model.vlm_with_expert import block_attention_mask


def _rope(x, positions):  # x (B, L, nh, hd), positions (B, L)
    half = x.shape[-1] // 2
    freq = (2.0 / x.shape[-1]) * torch.arange(half, dtype=torch.float32)
    radians = (positions[..., None].float() / (10_000**freq))[..., None, :]
    x1, x2 = x.float().split(half, dim=-1)
    return torch.cat([x1 * radians.cos() - x2 * radians.sin(), x2 * radians.cos() + x1 * radians.sin()], -1)


def _eager(q, k, v, mask, n_heads, n_kv):  # q (B, Lq, nh, hd), k/v (B, Lk, nkv, hd), mask (B, Lq, Lk)
    groups = n_heads // n_kv
    k = k.repeat_interleave(groups, dim=2)
    v = v.repeat_interleave(groups, dim=2)
    w = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * q.shape[-1] ** -0.5
    w = torch.where(mask[:, None], w, torch.finfo(torch.float32).min)
    out = torch.einsum("bhqk,bkhd->bqhd", F.softmax(w, dim=-1), v.float())
    return out.reshape(*out.shape[:2], -1)


def reference_velocity(policy, prefix, x_t, time):
    model = policy.model
    vwe = model.vlm_with_expert
    cfg = policy.config
    p_emb, p_pad, p_att = model.embed_prefix(prefix)
    s_emb = model.embed_suffix(x_t, time)
    batch, plen, slen = p_emb.shape[0], p_emb.shape[1], s_emb.shape[1]
    pad = torch.cat([p_pad, torch.ones(batch, slen, dtype=torch.bool)], 1)
    att = torch.cat([p_att, torch.ones(batch, slen, dtype=torch.bool)], 1)
    mask = block_attention_mask(pad, att)
    pos = torch.cumsum(pad.long(), 1) - 1
    vlm_layers = vwe.vlm.model.text_model.layers
    exp_layers = vwe.lm_expert.layers
    n_vlm, n_exp = len(vlm_layers), len(exp_layers)
    every = n_vlm // n_exp
    nh, nkv, hd = vwe.num_heads, vwe.num_kv_heads, vwe.head_dim
    streams = [p_emb, s_emb]
    for i in range(n_vlm):
        layers = [vlm_layers[i], exp_layers[i // every] if i % every == 0 else None]
        sa = cfg.attention_mode != "cross_attn" or (
            cfg.self_attn_every_n_layers > 0 and i % cfg.self_attn_every_n_layers == 0
        )
        normed = [lay.input_layernorm(h) if lay is not None else None for lay, h in zip(layers, streams, strict=True)]

        def proj(lay, x, name, n):
            return getattr(lay.self_attn, name)(x).view(*x.shape[:2], n, hd)

        if sa:
            live = [(lay, x) for lay, x in zip(layers, normed, strict=True) if lay is not None]
            q = torch.cat([proj(lay, x, "q_proj", nh) for lay, x in live], 1)
            k = torch.cat([proj(lay, x, "k_proj", nkv) for lay, x in live], 1)
            v = torch.cat([proj(lay, x, "v_proj", nkv) for lay, x in live], 1)
            n = q.shape[1]
            out = _eager(_rope(q, pos[:, :n]), _rope(k, pos[:, :n]), v, mask[:, :n, :n], nh, nkv)
            outs = [out[:, :plen], out[:, plen:] if layers[1] is not None else None]
        else:
            lay = layers[0]
            q, k, v = (proj(lay, normed[0], nm, n) for nm, n in (("q_proj", nh), ("k_proj", nkv), ("v_proj", nkv)))
            k = _rope(k, pos[:, :plen])
            outs = [_eager(_rope(q, pos[:, :plen]), k, v, mask[:, :plen, :plen], nh, nkv), None]
            if layers[1] is not None:
                e = layers[1]
                eq = _rope(proj(e, normed[1], "q_proj", nh), pos[:, plen:] - pos[:, plen:].min(1, keepdim=True).values)
                ek = e.self_attn.k_proj(k.flatten(2)).view(batch, plen, nkv, hd)
                ev = e.self_attn.v_proj(v.flatten(2)).view(batch, plen, nkv, hd)
                outs[1] = _eager(eq, ek, ev, mask[:, plen:, :plen], nh, nkv)
        new = []
        for lay, h, o in zip(layers, streams, outs, strict=True):
            if lay is None:
                new.append(h)
                continue
            h = h + lay.self_attn.o_proj(o.to(h.dtype))
            new.append(h + lay.mlp(lay.post_attention_layernorm(h)))
        streams = new
    suffix_out = vwe.lm_expert.norm(streams[1])[:, -cfg.chunk_size :]
    return model.action_out_proj(suffix_out).float()
