"""An optimizer that treats parameters by role, from outside src/: Muon for the hidden weight matrices,
AdamW for the rest (embeddings, the output head, gains and biases), as recent small-LM recipes do. One
class plus one YAML (tests/extensions/conf/optimizer/hybrid.yaml); its first argument, `named_parameters`,
is how tinytransformer.training.optim.build_optimizer knows to hand it the model's (name, parameter) pairs."""

from __future__ import annotations

import torch


class MuonAdamW(torch.optim.Optimizer):
    """Muon (torch.optim.Muon) on 2-D weights outside `adamw_names`; AdamW on everything else.

    One optimizer to Lightning, the scheduler and checkpoints: its two groups are Muon's and AdamW's own,
    so its state_dict holds both and a resumed run continues exactly.
    """

    def __init__(
        self,
        named_parameters: list[tuple[str, torch.nn.Parameter]],
        lr: float = 1e-3,
        matrix_lr: float = 0.02,
        weight_decay: float = 0.0,
        adamw_names: tuple[str, ...] = ("emb", "head"),
    ):
        def hidden_matrix(name: str, param: torch.nn.Parameter) -> bool:
            return param.ndim == 2 and not any(part in name for part in adamw_names)

        matrices = [p for n, p in named_parameters if hidden_matrix(n, p)]
        others = [p for n, p in named_parameters if not hidden_matrix(n, p)]
        super().__init__([{"params": matrices, "lr": matrix_lr}, {"params": others, "lr": lr}], {})
        muon, adamw = self.param_groups
        self.parts = [
            torch.optim.Muon([muon], lr=matrix_lr, weight_decay=weight_decay),
            torch.optim.AdamW([adamw], lr=lr, weight_decay=weight_decay),
        ]
        self._share_groups_and_state()

    def _share_groups_and_state(self) -> None:
        """Each part steps the very group and state dicts this optimizer saves and a scheduler sets."""
        for part, group in zip(self.parts, self.param_groups, strict=True):
            part.param_groups, part.state = [group], self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # new group and state dicts: hand them to the parts again
        self._share_groups_and_state()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self.parts:
            part.step()
        return loss
