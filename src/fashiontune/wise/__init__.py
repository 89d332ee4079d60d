"""WiSE-FT (Wortsman et al. 2022): weight-space ensembles of a zero-shot (base) and a fine-tuned model.

    fashiontune wise --base openai --fine-tuned runs/x/export --alphas 0,0.5,1 --out runs/x/wise [--eval CFG]
"""

from .blend import WiseError, blend_state, load_base_state, write_blend

__all__ = ["WiseError", "blend_state", "load_base_state", "write_blend"]
