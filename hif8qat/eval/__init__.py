"""Evaluation as lm-evaluation-harness scores it: tasks, tokenizers, the evaluator,
statistics for paired comparisons, and (lazily) the lm-eval adapter in ``harness``.

Example::

    import hif8qat as hq
    tok = hq.load_tokenizer("ckpt")
    res = hq.evaluate(model, tok, ["hellaswag:/data/hellaswag_val.jsonl"], num_fewshot=0)
"""
from .evaluator import (EvalResult, ItemRecord, encode_pair, encode_request, evaluate,
                        evaluation_mode, format_results, loglikelihood_tokens)
from .stats import acc_stderr, correct_vector, paired_bootstrap
from .tasks import (FORMATS, Item, Task, TaskSpec, hellaswag_preprocess, load_task,
                    parse_task_spec, register_task, registered_tasks)
from .tokenizers import (ByteTokenizer, HFTokenizer, SentencePieceTokenizer, load_tokenizer,
                         tok_encode)

__all__ = ["evaluate", "EvalResult", "ItemRecord", "encode_pair", "encode_request",
           "evaluation_mode", "format_results", "loglikelihood_tokens", "acc_stderr",
           "correct_vector", "paired_bootstrap", "FORMATS", "Item", "Task", "TaskSpec",
           "hellaswag_preprocess", "load_task", "parse_task_spec", "register_task",
           "registered_tasks", "ByteTokenizer", "HFTokenizer", "SentencePieceTokenizer",
           "load_tokenizer", "tok_encode"]
