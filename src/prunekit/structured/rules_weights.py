"""Channel-trace rules for operations with weights (linear, matmul, conv, norms, prelu, embedding,
attention): inputs are tied to the weight's columns, outputs get the weight's rows; attention makes
heads units.

A mixin of :class:`prunekit.structured.trace` 's labeller (``self.get``, ``self.set``, ``self.t``).
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten

from prunekit.structured.ops import FIXED, varying_dims

__all__ = ["WeightRules"]


class WeightRules:
    def is_param(self, x) -> bool:
        return isinstance(x, torch.Tensor) and id(x) in self.names

    def rule_matmul(self, args, kwargs, out) -> None:
        a, b = args[0], args[1]
        if self.is_param(b) and b.dim() == 2 and not self.is_param(a):  # x @ W with W (in, out)
            return self.linear_like(a, b, None, in_dim=0, out_dim=1, out=out)
        la, lb = self.get(a), self.get(b)
        if a.dim() == 1:
            la = la.unsqueeze(0)
        if b.dim() == 1:
            lb = lb.unsqueeze(-1)
        self.tie_along(la, [la.dim() - 1])
        self.tie_along(lb, [lb.dim() - 2])
        ra = la.amax(-1, keepdim=True)  # (..., m, 1)
        rb = lb.amax(-2, keepdim=True)  # (..., 1, n)
        shape = torch.broadcast_shapes(ra.shape[:-2], rb.shape[:-2]) + (ra.shape[-2], rb.shape[-1])
        ra, rb = ra.expand(shape), rb.expand(shape)
        self.t.tie(ra, rb)
        for lab, r, other, k_dim in ((la, ra, rb, la.dim() - 1), (lb, rb, ra, lb.dim() - 2)):
            if (other == FIXED).any() and k_dim in varying_dims(lab):
                self.t.pin(lab, "contracted with a tensor that has no channel slots")
        res = torch.where(ra > 0, ra, rb)
        if a.dim() == 1:
            res = res.squeeze(-2)
        if b.dim() == 1:
            res = res.squeeze(-1)
        self.set(out, res.contiguous())

    def rule_addmm(self, args, kwargs, out) -> None:
        bias, a, b = args[0], args[1], args[2]
        if self.is_param(b):
            return self.linear_like(a, b, bias if self.is_param(bias) else None, in_dim=0, out_dim=1, out=out)
        self.unknown("addmm", [bias, a, b], out)

    def feed(self, acts: torch.Tensor, slots: torch.Tensor) -> None:
        """Activations ``acts`` (already broadcast to ``slots``) enter a weight's input slots."""
        self.t.tie(acts, slots)
        fixed = acts == FIXED
        if fixed.any():
            self.t.pin(slots[fixed], "fed by the model's input or a constant")

    def linear_like(self, x, w, bias, in_dim, out_dim, out) -> None:
        lx = self.get(x)
        w_in, w_out = self.slots(w, in_dim), self.slots(w, out_dim)
        self.feed(lx, w_in.expand(lx.shape))
        if bias is not None:
            self.t.tie(self.slots(bias, 0), w_out)
        self.set(out, w_out.expand(out.shape).contiguous())

    def rule_linear(self, args, kwargs, out) -> None:
        x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        if not self.is_param(w) or (bias is not None and not self.is_param(bias)):
            return self.unknown("linear with a computed weight", [x, w], out)
        self.linear_like(x, w, bias, in_dim=1, out_dim=0, out=out)

    def conv(self, args, kwargs, out, transposed: bool) -> None:
        x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        groups = kwargs.get("groups", args[6] if len(args) > 6 else 1)
        if not self.is_param(w) or (bias is not None and not self.is_param(bias)):
            return self.unknown("convolution with a computed weight", [x, w], out)
        if transposed and groups > 1:
            return self.unknown("grouped transposed convolution", [x, w], out)
        lx = self.get(x)
        w_in, w_out = (self.slots(w, 0), self.slots(w, 1)) if transposed else (self.slots(w, 1), self.slots(w, 0))
        c_in, c_out = x.shape[1], out.shape[1]
        ch = lx.movedim(1, -1).reshape(-1, c_in)  # (positions, c_in)
        depthwise = groups > 1 and c_in == groups
        if groups == 1:
            self.feed(ch, w_in.expand(ch.shape))
        elif depthwise:  # whole groups go: input channel k with its output channels
            per_group = w_out.reshape(groups, c_out // groups)
            self.feed(ch, per_group[:, 0].expand(ch.shape))
            self.tie_along(per_group, [1])
        else:  # the same local channel goes from every group
            cin_g = c_in // groups
            self.feed(ch.reshape(-1, groups, cin_g), w_in.expand(ch.shape[0], groups, cin_g))
            self.tie_along(w_out.reshape(groups, c_out // groups), [0])
        if bias is not None:
            self.t.tie(self.slots(bias, 0), w_out)
        self.t.convs[self.names[id(w)]] = {"groups": groups, "depthwise": depthwise, "transposed": transposed}
        shape = [1] * out.dim()
        shape[1] = c_out
        self.set(out, w_out.reshape(shape).expand(out.shape).contiguous())

    def rule_conv(self, args, kwargs, out):
        self.conv(args, kwargs, out, transposed=False)

    def rule_conv_transpose(self, args, kwargs, out):
        self.conv(args, kwargs, out, transposed=True)

    def per_channel(self, x, out, params, dim: int) -> None:
        """Norm-like: ``params`` are indexed by ``x``'s channel dimension ``dim``; labels pass through."""
        lx = self.get(x)
        ch = lx.movedim(dim, -1).reshape(-1, x.shape[dim])
        for p in params:
            if p is None:
                continue
            if not (self.is_param(p) or id(p) in self.buffers):
                return self.unknown("normalisation with computed statistics", [x], out)
            self.feed(ch, self.slots(p, 0).expand(ch.shape))
        self.set(out, lx)

    def rule_batch_norm(self, args, kwargs, out):
        x = args[0]
        names = ("running_mean", "running_var", "weight", "bias")
        ps = [kwargs.get(n, args[i + 1] if len(args) > i + 1 else None) for i, n in enumerate(names)]
        self.per_channel(x, out, ps, 1)

    def rule_instance_norm(self, args, kwargs, out):
        x = args[0]
        names = ("running_mean", "running_var", "weight", "bias")
        ps = [kwargs.get(n, args[i + 1] if len(args) > i + 1 else None) for i, n in enumerate(names)]
        self.per_channel(x, out, ps, 1)

    def rule_layer_norm(self, args, kwargs, out):
        x, shape = args[0], args[1] if len(args) > 1 else kwargs["normalized_shape"]
        w = args[2] if len(args) > 2 else kwargs.get("weight")
        b = args[3] if len(args) > 3 else kwargs.get("bias")
        if len(shape) != 1:
            return self.unknown("layer_norm over more than one dimension", [x], out)
        self.per_channel(x, out, [w, b], x.dim() - 1)

    def rule_rms_norm(self, args, kwargs, out):
        x, shape = args[0], args[1] if len(args) > 1 else kwargs["normalized_shape"]
        w = args[2] if len(args) > 2 else kwargs.get("weight")
        if len(shape) != 1:
            return self.unknown("rms_norm over more than one dimension", [x], out)
        self.per_channel(x, out, [w], x.dim() - 1)

    def rule_group_norm(self, args, kwargs, out):
        x, groups = args[0], args[1] if len(args) > 1 else kwargs["num_groups"]
        w = args[2] if len(args) > 2 else kwargs.get("weight")
        b = args[3] if len(args) > 3 else kwargs.get("bias")
        lx = self.get(x)
        c = x.shape[1]
        ch = lx.movedim(1, -1).reshape(-1, groups, c // groups)
        self.tie_along(ch, [1])  # the same local channel goes from every group
        self.per_channel(x, out, [w, b], 1)

    def rule_prelu(self, args, kwargs, out):
        x, w = args[0], args[1]
        if w.numel() == 1:
            return self.set(out, self.get(x))
        self.per_channel(x, out, [w], 1)

    def rule_embedding(self, args, kwargs, out):
        w = args[1] if len(args) > 1 else kwargs["weight"]
        if not self.is_param(w):
            return self.unknown("embedding with a computed table", [w], out)
        self.set(out, self.slots(w, 1).expand(out.shape).contiguous())

    def rule_scaled_dot_product_attention(self, args, kwargs, out):
        q, k, v = args[:3]
        mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
        lq, lk, lv = self.get(q), self.get(k), self.get(v)
        if q.dim() < 3:
            self.tie_along(torch.cat([lq.reshape(-1), lk.reshape(-1), lv.reshape(-1)]).unsqueeze(0), [1])
            return self.set(out, lq.amax().expand(out.shape).contiguous())
        hq, hk = q.shape[-3], k.shape[-3]
        rep = torch.from_numpy(self.t.new(hk))  # one unit per key/value head with its query heads
        per_q = rep.repeat_interleave(hq // hk)
        shape_q = (1,) * (q.dim() - 3) + (hq, 1, 1)
        shape_k = (1,) * (k.dim() - 3) + (hk, 1, 1)
        self.t.tie(lq, per_q.reshape(shape_q).expand(lq.shape))
        self.t.tie(lk, rep.reshape(shape_k).expand(lk.shape))
        self.t.tie(lv, rep.reshape(shape_k).expand(lv.shape))
        if isinstance(mask, torch.Tensor) and mask.dim() >= 3 and mask.shape[-3] == hq and hq > 1:
            lm = self.get(mask)
            if (lm == FIXED).any():
                self.t.pin(per_q, "a per-head attention mask without channel slots")
            self.t.tie(lm, per_q.reshape(shape_q).expand(lm.shape))
        self.set(out, per_q.reshape(shape_q).expand(out.shape).contiguous())

    def rule_multi_head_attention_forward(self, args, kwargs, out):
        names = ["query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
                 "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias"]
        a = dict(zip(names, args))
        a.update(kwargs)
        w_in, b_in, w_out, b_out = a["in_proj_weight"], a["in_proj_bias"], a["out_proj_weight"], a["out_proj_bias"]
        if kwargs.get("use_separate_proj_weight") or a["bias_k"] is not None or not self.is_param(w_in):
            return self.unknown("multi_head_attention_forward with separate projections or bias_k/bias_v",
                                [a["query"], a["key"], a["value"]], out)
        e, h = a["embed_dim_to_check"], a["num_heads"]
        cols, rows = self.slots(w_in, 1), self.slots(w_in, 0)
        for x in (a["query"], a["key"], a["value"]):
            lx = self.get(x)
            self.feed(lx, cols.expand(lx.shape))
        heads = rows.reshape(3, h, e // h).permute(1, 0, 2).reshape(h, -1)
        o_cols = self.slots(w_out, 1).reshape(h, e // h)
        self.tie_along(torch.cat([heads, o_cols], 1), [1])  # a head: its q, k, v rows and out columns
        if b_in is not None:
            self.t.tie(self.slots(b_in, 0), rows)
        o_rows = self.slots(w_out, 0)
        if b_out is not None:
            self.t.tie(self.slots(b_out, 0), o_rows)
        # torch keeps embed_dim == num_heads * head_dim: the model width and the heads move together or not at all
        self.t.pin(torch.cat([cols, o_rows]), "nn.MultiheadAttention's embed_dim (the residual width) is fixed")
        self.t.attention[self.names[id(w_in)]] = {"num_heads": h}
        outs = tree_flatten(out)[0]
        self.set(outs[0], o_rows.expand(outs[0].shape).contiguous())
