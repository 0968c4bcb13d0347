"""BERT-EMD as a custom strategy: many-to-many layer mapping by Earth Mover's Distance.

Li et al., "BERT-EMD: Many-to-Many Layer Mapping for BERT Compression with Earth Mover's
Distance", EMNLP 2020. Every student layer may learn from every teacher layer. For the
hidden states and, separately, for the attention maps:

- the ground distance ``d_ij`` between student layer ``i`` and teacher layer ``j`` is the MSE
  between them (student hidden states through one learnt projection to the teacher's width);
- each layer carries a weight (student ``w^S``, teacher ``w^T``, each summing to 1, uniform at
  first); the flow ``f`` solves the transport problem
  ``min sum_ij f_ij d_ij  s.t.  sum_j f_ij = w^S_i,  sum_i f_ij = w^T_j,  f >= 0``
  (here with scipy's ``linprog``), and the loss is ``sum_ij f_ij d_ij`` (gradients flow
  through ``d``, the flow is a constant);
- after each training step the weights are updated by the paper's *cost attention*: a layer's
  transfer cost is what it moves divided by its weight, ``C^S_i = sum_j f_ij d_ij / w^S_i``
  (``C^T_j`` likewise); the weight becomes ``softmax_i((sum_k C^S_k / C^S_i) / tau)``, so layers
  that transfer cheaply get more mass.

The total loss adds the embedding-layer MSE (one-to-one) and, from the toolkit's one KD objective
(:class:`~distill_toolkit.strategies.KDObjective`), logits KD and the hard-label loss with the usual
``distillation`` settings (weights and their schedules, temperature and its scheduler, ``kd_loss``);
only the EMD part is written here. The paper trains the layers first and the prediction layer second;
here both at once (set ``kd_loss_weight: 0`` for the first stage).

This file uses only the public API (``Strategy``, ``register_strategy``, ``KDObjective``,
``losses.get``, ``build_projection``): adding a strategy touches no file of the toolkit. Settings come from
``distillation.strategy_options``: ``student_layers`` and ``teacher_layers`` (block counts),
``tau`` (1.0), ``attention_weight`` / ``hidden_weight`` / ``embedding_weight`` (1.0 each).

Run (real data and MiniLM weights, a few minutes on 2 CPU cores)::

    python examples/bert_emd.py                       # movie reviews, MiniLM-L6 teacher -> 3-block student
    python examples/bert_emd.py --steps 30 --teacher-steps 30
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linprog

from distill_toolkit import losses
from distill_toolkit.projections import build_projection
from distill_toolkit.strategies import KDObjective, Strategy, StrategyError, register_strategy


def emd_flow(weights_S: np.ndarray, weights_T: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """The optimal flow ``f`` (M x N) moving mass ``weights_S`` onto ``weights_T`` at ``cost`` per unit.

    Weights are normalised to sum to 1 each, so every constraint is an equality (a balanced
    transport problem: ``sum_j f_ij = w^S_i``, ``sum_i f_ij = w^T_j``, ``f >= 0``).
    """
    w_S = np.asarray(weights_S, dtype=np.float64)
    w_T = np.asarray(weights_T, dtype=np.float64)
    w_S, w_T = w_S / w_S.sum(), w_T / w_T.sum()
    M, N = cost.shape
    rows = np.kron(np.eye(M), np.ones((1, N)))  # sum over j of f_ij, for each i
    cols = np.kron(np.ones((1, M)), np.eye(N))  # sum over i of f_ij, for each j
    # One row constraint is implied by the others (both sides sum to 1); drop it for a full-rank system.
    A_eq = np.vstack([rows, cols[:-1]])
    b_eq = np.concatenate([w_S, w_T[:-1]])
    result = linprog(np.asarray(cost, dtype=np.float64).ravel(), A_eq=A_eq, b_eq=b_eq, bounds=(0, None),
                     method="highs")
    if not result.success:
        raise RuntimeError(f"the EMD transport problem failed: {result.message}")
    return np.clip(result.x.reshape(M, N), 0.0, None)


def cost_attention(flow: np.ndarray, cost: np.ndarray, weights_S: np.ndarray, weights_T: np.ndarray,
                   tau: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """New layer weights from one transport (the paper's cost attention; see the module docstring)."""
    moved = flow * cost

    def update(transfer: np.ndarray, weights: np.ndarray) -> np.ndarray:
        unit_cost = np.maximum(transfer / np.maximum(weights, 1e-12), 1e-12)
        ratio = unit_cost.sum() / unit_cost
        z = ratio / tau
        e = np.exp(z - z.max())
        return e / e.sum()

    return update(moved.sum(axis=1), weights_S), update(moved.sum(axis=0), weights_T)


def layer_distances(feats_S: list, feats_T: list, loss_fn, mask=None) -> torch.Tensor:
    """``d[i, j] = loss_fn(feats_S[i], feats_T[j])``, differentiable in the student's features."""
    return torch.stack([torch.stack([loss_fn(s, t, mask=mask) for t in feats_T]) for s in feats_S])


@register_strategy("bert_emd", overwrite=True)
class BertEMD(Strategy):
    """BERT-EMD: EMD-weighted many-to-many hidden and attention losses, cost-attention layer weights."""

    teacher_roles = ("teacher",)

    def __init__(self, config):
        super().__init__(config)
        opts = self.options
        missing = [k for k in ("student_layers", "teacher_layers") if not isinstance(opts.get(k), int)]
        if missing:
            raise StrategyError(f"strategy 'bert_emd' needs distillation.strategy_options {missing} (numbers of "
                                "transformer blocks). Fix: e.g. strategy_options: {student_layers: 3, teacher_layers: 6}")
        self.M, self.N = opts["student_layers"], opts["teacher_layers"]
        self.tau = float(opts.get("tau", 1.0))
        self.objective = KDObjective(config)  # logits KD + hard labels; its matches are unused (EMD replaces them)
        self.hidden_mse = losses.get("hidden_mse")
        self.projection = torch.nn.Identity()
        # Layer weights are state, not parameters: checkpointed with the strategy, never trained by SGD.
        for kind in ("hidden", "attention"):
            self.register_buffer(f"{kind}_weights_S", torch.full((self.M,), 1.0 / self.M, dtype=torch.float64))
            self.register_buffer(f"{kind}_weights_T", torch.full((self.N,), 1.0 / self.N, dtype=torch.float64))
        self.last_flows: dict[str, np.ndarray] = {}

    def feature_keys(self):
        return {"student": [f"hidden:{i}" for i in range(self.M + 1)] + [f"attention:{i}" for i in range(self.M)],
                "teacher": [f"hidden:{j}" for j in range(self.N + 1)] + [f"attention:{j}" for j in range(self.N)]}

    def setup(self, student, teachers):
        teacher = teachers["teacher"]
        dim_S = student.features["hidden:0"].shape[-1]
        dim_T = teacher.features["hidden:0"].shape[-1]
        a_S, a_T = student.features["attention:0"], teacher.features["attention:0"]
        # Different head counts: compare head-summed maps (TextBrewer's attention_mse_sum).
        self.attention_mse = losses.get("attention_mse" if a_S.shape == a_T.shape else "attention_mse_sum")
        self.objective.check_labels(student)  # hard labels need `labels`; KD needs comparable logits
        if self.config.kd_loss_weight > 0:
            self.objective.check_logits(student, teacher)
        self.projection = (build_projection("linear", dim_S, dim_T).to(student.features["hidden:0"].device)
                           if dim_S != dim_T else torch.nn.Identity())

    def param_groups(self, learning_rate):
        params = list(self.projection.parameters())
        return [{"params": params, "lr": learning_rate}] if params else []

    def emd_term(self, kind: str, feats_S: list, feats_T: list, loss_fn, mask) -> torch.Tensor:
        distances = layer_distances(feats_S, feats_T, loss_fn, mask)
        w_S = getattr(self, f"{kind}_weights_S").cpu().numpy()
        w_T = getattr(self, f"{kind}_weights_T").cpu().numpy()
        cost = distances.detach().double().cpu().numpy()
        flow = emd_flow(w_S, w_T, cost)
        self.last_flows[kind] = flow
        if self.training:  # cost attention: re-weight the layers after each training step
            new_S, new_T = cost_attention(flow, cost, w_S, w_T, self.tau)
            getattr(self, f"{kind}_weights_S").copy_(torch.from_numpy(new_S))
            getattr(self, f"{kind}_weights_T").copy_(torch.from_numpy(new_T))
        return (torch.as_tensor(flow, dtype=distances.dtype, device=distances.device) * distances).sum()

    def forward(self, batch, student, teachers, progress):
        teacher, cfg = teachers["teacher"], self.config
        loss, terms = self.emd_loss(student, teacher)
        kd = self.objective.kd_term(student, teacher) if cfg.kd_loss_weight > 0 else None
        hard = self.objective.hard_label_term(student) if cfg.hard_label_weight > 0 else None
        if kd is not None or hard is not None:  # weighted by their schedules, as in every other strategy
            kd_loss, kd_terms = self.objective.total(progress, kd=kd, hard=hard)
            loss, terms = loss + kd_loss, {**terms, **kd_terms}
        return loss, terms

    def emd_loss(self, student, teacher) -> tuple[torch.Tensor, dict]:
        """The custom part: embedding MSE plus the EMD hidden and attention terms, weighted by the options."""
        opts = self.options
        mask = student.inputs_mask
        hid_S = [self.projection(student.features[f"hidden:{i}"]) for i in range(self.M + 1)]
        hid_T = [teacher.features[f"hidden:{j}"] for j in range(self.N + 1)]
        att_S = [student.features[f"attention:{i}"] for i in range(self.M)]
        att_T = [teacher.features[f"attention:{j}"] for j in range(self.N)]
        terms = {
            "embedding": self.hidden_mse(hid_S[0], hid_T[0], mask=mask),
            "emd_hidden": self.emd_term("hidden", hid_S[1:], hid_T[1:], self.hidden_mse, mask),
            "emd_attention": self.emd_term("attention", att_S, att_T, self.attention_mse, mask),
        }
        total = (opts.get("embedding_weight", 1.0) * terms["embedding"]
                 + opts.get("hidden_weight", 1.0) * terms["emd_hidden"]
                 + opts.get("attention_weight", 1.0) * terms["emd_attention"])
        return total, {k: v.detach() for k, v in terms.items()}


# ---- the runnable example --------------------------------------------------------------------
def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import common
    from distill_toolkit import DistillationConfig, Match, Trainer
    from distill_toolkit.models import student_from_teacher

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="outputs/examples")
    parser.add_argument("--steps", type=int, default=100, help="distillation steps per student")
    parser.add_argument("--teacher-steps", type=int, default=common.TEACHER_STEPS)
    parser.add_argument("--max-length", type=int, default=common.MAX_LENGTH)
    args = parser.parse_args()
    out = Path(args.output_dir)
    data, tokenizer = common.sentiment("movies", args.max_length)
    teacher_dir = common.fine_tuned_teacher(out / "teachers", "movies", seed=0, steps=args.teacher_steps,
                                            max_length=args.max_length)
    teacher = common.load_teacher(teacher_dir)
    n_T = teacher.config.num_hidden_layers
    runs = {
        "BERT-EMD (many-to-many)": DistillationConfig(
            strategy="bert_emd", temperature=1.0, kd_loss_weight=1.0, hard_label_weight=0.5,
            strategy_options={"student_layers": 3, "teacher_layers": n_T, "tau": 1.0}),
        "fixed map S_i -> T_2i": DistillationConfig(
            strategy="single", temperature=1.0, kd_loss_weight=1.0, hard_label_weight=0.5,
            matches=[Match(teacher_layer=2 * i, student_layer=i) for i in range(4)]
            + [Match(teacher_layer=2 * i + 1, student_layer=i, feature="attention", loss="attention_mse")
               for i in range(3)]),
    }
    rows = [common.row("teacher: MiniLM-L6, fine-tuned", teacher, data, tokenizer)]
    flows = {}
    for label, distill in runs.items():
        student = common.freeze_word_embeddings(student_from_teacher(teacher, [1, 3, 5]))
        run_dir = out / "bert_emd" / distill.strategy
        trainer = Trainer(student, common.training(run_dir, args.steps), distill, data["train"],
                          teacher=teacher, collate_fn=common.collator(tokenizer), tokenizer=tokenizer)
        with common.Timer() as timer:
            trainer.train()
        if distill.strategy == "bert_emd":
            flows = {k: v.round(3).tolist() for k, v in trainer.strategy.last_flows.items()}
            flows["hidden_weights_S"] = trainer.strategy.hidden_weights_S.round(decimals=3).tolist()
            flows["hidden_weights_T"] = trainer.strategy.hidden_weights_T.round(decimals=3).tolist()
        rows.append(common.row(f"student 3 blocks, {label}", student, data, tokenizer, timer.seconds, trainer))
    common.print_table(rows, teacher_acc=rows[0]["test_acc"])
    print("last EMD flows (rows: student blocks 1-3, columns: teacher blocks 1-6):")
    for kind in ("hidden", "attention"):
        print(f"  {kind}:", flows.get(kind))
    print(json.dumps({"rows": rows, "flows": flows}))


if __name__ == "__main__":
    main()
