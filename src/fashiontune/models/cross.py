"""A cross-encoder re-ranker over an open_clip model's token outputs (issue 14).

The dual encoder scores a (caption, image) pair by one dot product of two pooled vectors, so it cannot tell
"red top, blue trousers" from "blue top, red trousers" when both garments' colours are present. The
cross-encoder lets every caption token attend to the image's patch tokens (a few transformer decoder layers:
text self-attention, text -> image cross-attention, MLP) and reads a match score off the attended text. It
only ever scores a query's dual-encoder top-K, never the whole corpus.

    txt = text_tokens(clip, tokens)           # (pooled normalised embedding, B x T x Wt tokens, B x T pad mask)
    img = image_tokens(clip, images)          # (pooled normalised embedding, B x P x Wv patch tokens)
    scores = cross(txt_tok[a], txt_pad[a], img_tok[b], cosine)   # M scores of M (caption a, image b) pairs

The score is `dual_weight * cosine + head(...)` with the head's last layer initialised to zero: an untrained
re-ranker reproduces the dual encoder's order exactly, and training moves it only where the tokens help.

Tokens come straight from open_clip: the image tower is open_clip's VisionTransformer with `output_tokens`
(patch tokens after ln_post, the class token left out); the text tokens are the text transformer's per-token
output after ln_final (what encode_text pools at the end-of-text token). Other towers (ModifiedResNet, timm,
CustomTextCLIP) are refused with the fix.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RERANKER_WEIGHTS = "reranker.pt"
RERANKER_INFO = "reranker.json"


class TokenError(TypeError):
    """A model whose towers do not expose the tokens the cross-encoder needs."""


@dataclass
class CrossConfig:
    width: int = 128  # the cross-encoder's own width (text and image tokens are projected to it)
    layers: int = 2  # decoder layers: text self-attention + text -> image cross-attention + MLP
    heads: int = 4
    dropout: float = 0.0


def check_tokens(clip: nn.Module) -> None:
    """TokenError unless `clip` exposes what the re-ranker reads: ViT patch tokens and CLIP-class text tokens."""
    visual = getattr(clip, "visual", None)
    if visual is None or not hasattr(visual, "_pool") or not hasattr(visual, "output_tokens"):
        raise TokenError(f"the re-ranker needs an open_clip ViT image tower (patch tokens); {type(visual).__name__} "
                         "has none. Use a ViT model (e.g. model.name=ft-tiny-vit or ViT-B-32).")
    if not hasattr(clip, "token_embedding") or not hasattr(clip, "ln_final"):
        raise TokenError(f"the re-ranker reads the text transformer's tokens of open_clip's CLIP class; "
                         f"{type(clip).__name__} keeps its text tower elsewhere. Use a CLIP-class model (ViT-*).")


def image_tokens(clip: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """(B x D normalised pooled embedding, B x P x Wv patch tokens) in one pass of the image tower."""
    check_tokens(clip)
    visual, old = clip.visual, clip.visual.output_tokens
    visual.output_tokens = True
    try:
        pooled, tokens = visual(images)
    finally:
        visual.output_tokens = old
    return F.normalize(pooled.float(), dim=-1), tokens


def text_tokens(clip: nn.Module, text: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(B x D normalised pooled embedding, B x T x Wt tokens, B x T bool mask True = padding after end-of-text):
    open_clip's CLIP.encode_text, keeping the per-token output."""
    from open_clip.transformer import text_global_pool

    check_tokens(clip)
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(text).to(cast) + clip.positional_embedding.to(cast)
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
    pooled = text_global_pool(x, text, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
    proj = clip.text_projection
    if proj is not None:
        pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
    eot = text.argmax(dim=-1, keepdim=True)  # open_clip's argmax pooling: the end-of-text token has the top id
    pad = torch.arange(text.shape[1], device=text.device)[None] > eot
    return F.normalize(pooled.float(), dim=-1), x, pad


class CrossEncoder(nn.Module):
    def __init__(self, text_width: int, image_width: int, cfg: CrossConfig, dual_weight: float = 10.0):
        super().__init__()
        self.cfg, self.text_width, self.image_width = cfg, text_width, image_width
        d = cfg.width
        self.text_in = nn.Sequential(nn.Linear(text_width, d), nn.LayerNorm(d))
        self.image_in = nn.Sequential(nn.Linear(image_width, d), nn.LayerNorm(d))
        layer = nn.TransformerDecoderLayer(d, cfg.heads, 4 * d, cfg.dropout, batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, cfg.layers)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.dual_weight = nn.Parameter(torch.tensor(float(dual_weight)))

    def forward(self, txt: Tensor, pad: Tensor, img: Tensor, cosine: Tensor) -> Tensor:
        """M (caption, image) pairs: txt M x T x Wt, pad M x T, img M x P x Wv, cosine M (the dual encoder's
        similarity of the pair) -> M scores."""
        n = int((~pad).sum(1).max()) if pad.numel() else 0  # drop the columns that are padding in every pair
        txt, pad = txt[:, : max(n, 1)], pad[:, : max(n, 1)]
        h = self.layers(self.text_in(txt.float()), self.image_in(img.float()), tgt_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()
        pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1)
        return self.dual_weight * cosine.float() + self.head(pooled).squeeze(-1)


def listwise_loss(scores: Tensor, positive: int = 0) -> Tensor:
    """Cross-entropy of each query's candidates with the positive at column `positive` (1 positive + hard negatives)."""
    return F.cross_entropy(scores, torch.full((scores.shape[0],), positive, dtype=torch.long, device=scores.device))


def build_cross(clip: nn.Module, cfg: CrossConfig) -> CrossEncoder:
    """A cross-encoder sized for this open_clip model's token widths."""
    check_tokens(clip)
    return CrossEncoder(clip.token_embedding.embedding_dim, clip.visual.conv1.out_channels, cfg)


def save_reranker(out_dir: str | Path, cross: CrossEncoder, model_name: str, extra: dict[str, Any] | None = None) -> None:
    """reranker.pt (state dict) + reranker.json (sizes, config), beside the open_clip export of the towers."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in cross.state_dict().items()}, out / RERANKER_WEIGHTS)
    info = {"model": model_name, "text_width": cross.text_width, "image_width": cross.image_width,
            "cross": asdict(cross.cfg), **(extra or {})}
    (out / RERANKER_INFO).write_text(json.dumps(info, indent=2))


def load_reranker(export_dir: str | Path) -> tuple[CrossEncoder, dict]:
    """The cross-encoder of an export directory (its towers load as the export's open_clip model)."""
    p = Path(export_dir)
    info_path, weights = p / RERANKER_INFO, p / RERANKER_WEIGHTS
    if not info_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"rerank.model={export_dir}: no {RERANKER_INFO} / {RERANKER_WEIGHTS} there; pass the "
                                "export directory of a task.name=rerank run (runs/<name>/export).")
    info = json.loads(info_path.read_text())
    cross = CrossEncoder(int(info["text_width"]), int(info["image_width"]), CrossConfig(**info["cross"]))
    cross.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return cross.eval(), info
