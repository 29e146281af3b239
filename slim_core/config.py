"""One typed configuration for the whole pipeline, loaded from YAML with environment overrides.

    config = load_config("configs/demo.yaml")

Environment variables override the file: `SLIM_` + the field path joined by `__`, e.g.
`SLIM_DATA__K_CORE_USERS=10` or `SLIM_RUN__OUTPUT_DIR=/tmp/out`. Relative paths are taken
relative to the working directory. Unknown keys are errors, so typos do not pass silently.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from slim_core.errors import ConfigError

# Tokens a step header such as '\nStep 2:' may take (5 with the shipped students' tokenizers).
STEP_HEADER_TOKENS = 6


def check_step_budget(step_tokens: int | None, max_tokens: int, backend: str) -> None:
    """A step budget (see slim_core/llm/step_budget.py) needs the transformers backend and
    room for three steps and their headers within max_tokens."""
    if step_tokens is None:
        return
    if backend != "transformers":
        raise ValueError("step_tokens is implemented by the transformers backend only")
    needed = 3 * (step_tokens + STEP_HEADER_TOKENS)
    if needed > max_tokens:
        raise ValueError(
            f"step_tokens {step_tokens}: three steps and their headers need up to {needed} "
            f"tokens, more than max_tokens {max_tokens}; lower step_tokens to "
            f"{max_tokens // 3 - STEP_HEADER_TOKENS} or raise max_tokens"
        )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunConfig(_Strict):
    name: str = Field("slim", description="Run name, shown in Prefect and in reports.")
    output_dir: Path = Field(Path("runs/slim"), description="Folder for all artifacts of the run.")
    seed: int = Field(42, description="Seed for every random choice in the pipeline.")
    task_runner: Literal["thread", "dask"] = Field(
        "thread",
        description="thread: independent tasks (teacher batches, student shards, recommender "
        "runs) one after another in the flow's process; dask: submitted to a Dask cluster "
        "(pip install '.[dask]').",
    )
    dask_address: str | None = Field(
        None, description="Scheduler of an existing Dask cluster; None: a local one per run."
    )
    dask_workers: int = Field(2, ge=1, description="Worker processes of the local Dask cluster.")
    dask_dashboard_address: str = Field(
        "127.0.0.1:8787",
        description="Where the local Dask cluster's dashboard listens: loopback by default "
        "(Dask's own default, :8787, is every interface); ':8787' to open it to the network.",
    )


class InteractionColumns(_Strict):
    """Names of the interaction columns in the user's file."""

    user: str = Field("user_id", description="User id column.")
    item: str = Field("item_id", description="Item id column.")
    timestamp: str = Field("timestamp", description="Time column: unix time or a date/time string.")
    rating: str | None = Field(
        None, description="Rating column; default: 'rating' when the file has one."
    )


class ItemColumns(_Strict):
    """Names of the item-table columns; a text field left empty is found among common names."""

    item: str = Field("item_id", description="Item id column (joins to interactions).")
    title: str | None = Field(None, description="Title column (auto: title, movie_title, name).")
    category: str | None = Field(
        None, description="Category column (auto: category, categories, class, genre, genres)."
    )
    brand: str | None = Field(None, description="Brand column (auto: brand, store, manufacturer).")
    description: str | None = Field(None, description="Description column (auto: description).")


class RecBoleAtomicSource(_Strict):
    """RecBole atomic files: `.inter` rows (user, item, [rating], timestamp) and an `.item` table."""

    format: Literal["recbole_atomic"]
    interactions: Path = Field(description="The .inter file.")
    items: Path | None = Field(None, description="The .item file with item text.")
    columns: InteractionColumns = InteractionColumns()
    item_columns: ItemColumns = ItemColumns()
    encoding: str = Field("utf-8", description="Text encoding of the files (e.g. latin-1).")


class RecBoleSequenceSource(_Strict):
    """RecBole sequence files (user, item_id_list, target) with an item text file and index maps."""

    format: Literal["recbole_sequence"]
    sequences: list[Path] = Field(
        min_length=1,
        description="Sequence files; per user the longest history + target is used "
        "(the .test.inter file alone holds every full sequence).",
    )
    item_text: Path | None = Field(
        None, description="Item text file: `item \\t title. category. brand.`"
    )
    item_index: Path | None = Field(
        None, description="`item \\t integer id` map from the text file's ids to the sequence ids."
    )
    user_index: Path | None = Field(None, description="`user \\t integer id` map.")
    encoding: str = Field("utf-8", description="Text encoding of the files.")


class AmazonReviewsSource(_Strict):
    """Amazon Reviews 2018 or 2023 JSON Lines (plain or .gz): reviews plus an optional meta file."""

    format: Literal["amazon_reviews"]
    reviews: Path = Field(description="Reviews .jsonl / .json / .jsonl.gz file.")
    meta: Path | None = Field(None, description="meta_*.jsonl(.gz) with title, category, brand.")
    item_key: Literal["parent_asin", "asin"] = Field(
        "parent_asin", description="2023 files: group variants by parent_asin (default) or asin."
    )


class TableSource(_Strict):
    """Plain CSV/TSV/Parquet tables with a column mapping."""

    format: Literal["table"]
    interactions: Path = Field(description="Interactions file (.csv, .tsv, .parquet).")
    items: Path | None = Field(None, description="Item table file (.csv, .tsv, .parquet).")
    columns: InteractionColumns = InteractionColumns()
    item_columns: ItemColumns = ItemColumns()
    timestamp_format: str | None = Field(
        None, description="strptime format for string times, e.g. '%d/%m/%Y %H:%M'."
    )
    timestamp_unit: Literal["s", "ms"] = Field("s", description="Unit of numeric timestamps.")
    delimiter: str | None = Field(None, description="CSV delimiter; default: detected.")
    encoding: str = Field("utf-8", description="Text encoding of CSV files.")


# Shared by the teacher and the student: where their train-cutoff prompts stop.
TrainCutoffLead = Annotated[
    int,
    Field(
        ge=0,
        description="Write the train-cutoff rationale this many items before the user's last "
        "training item, so that the last train_cutoff_lead + 1 training targets read it (a "
        "rationale is only read by targets after it). 0: only the last training item reads it, "
        "one target per rationale, which a recommender can memorise.",
    ),
]

DataSource = Annotated[
    RecBoleAtomicSource | RecBoleSequenceSource | AmazonReviewsSource | TableSource,
    Field(discriminator="format"),
]


class DataConfig(_Strict):
    source: DataSource
    dedup: Literal["first", "last", "exact"] = Field(
        "first",
        description="Repeated (user, item) pairs: keep the first or last, or drop only exact "
        "duplicate rows (same user, item and time).",
    )
    min_rating: float | None = Field(None, description="Drop interactions rated below this.")
    k_core_users: int = Field(
        5,
        ge=1,
        description="Keep users with at least this many interactions (at least 3 "
        "always: leave-one-out needs a train, a valid and a test item).",
    )
    k_core_items: int = Field(5, ge=1, description="Keep items with at least this many users.")
    max_history: int = Field(
        50, ge=1, description="Most recent items a test target's history keeps; older are cut."
    )
    tie_break: Literal["item_id", "source_order"] = Field(
        "item_id", description="Order of a user's interactions that share a timestamp."
    )
    domain: Literal["products", "movies"] = Field(
        "products",
        description="What the items are; sets the words of the teacher and student prompts "
        "(products: customer, categories and brands; movies: viewer, genres).",
    )
    sample_users: int | None = Field(
        None,
        ge=1,
        description="Keep a sample of this many users, drawn before any filtering by a hash of "
        "their id and `sample_seed` (the same users on every run and machine; None: all). "
        "For a run sized to a machine: the filters then apply to the sample.",
    )
    sample_seed: int = Field(0, description="Which users `sample_users` draws.")
    duckdb_threads: int | None = Field(None, ge=1, description="DuckDB threads (default: all).")
    duckdb_memory_limit: str | None = Field(
        None,
        pattern=r"(?i)^\s*\d+(\.\d+)?\s*(%|b|bytes|[kmgt]i?b?)\s*$",
        description="DuckDB memory limit, e.g. '1GB', '512MiB', '8G' or '80%'.",
    )
    duckdb_temp_directory: Path | None = Field(
        None,
        description="Where DuckDB spills what does not fit in duckdb_memory_limit (default: "
        "DuckDB's own, a .tmp folder in the working directory). A large log on a small machine "
        "needs room here: a disk with free space of about the log's size a few times over.",
    )


class EncoderConfig(_Strict):
    """The text encoder for item text and rationales (sentence-transformers)."""

    model: str = Field(
        "all-MiniLM-L6-v2",
        description="A sentence-transformers model: the bundled all-MiniLM-L6-v2 or a local path.",
    )
    batch_size: int = Field(64, ge=1, description="Texts per encoding batch.")
    device: str = Field("cpu", description="Torch device, e.g. cpu or cuda.")


RecModel = Literal["sasrec", "gru4rec", "srgnn"]
# id: ID embeddings only; item_text: + item text vectors (the paper's item feature extension);
# user_text: + a per-(user, cutoff) text vector on the user side; item_user_text: both.
RecVariant = Literal["id", "item_text", "user_text", "item_user_text"]


class VariantInputs(NamedTuple):
    """What a variant reads besides item IDs."""

    item_text: bool  # the item text vectors
    user_text: bool  # a text vector per (user, cutoff): rationales, or a control


VARIANTS = {
    "id": VariantInputs(item_text=False, user_text=False),
    "item_text": VariantInputs(item_text=True, user_text=False),
    "user_text": VariantInputs(item_text=False, user_text=True),
    "item_user_text": VariantInputs(item_text=True, user_text=True),
}


class RecommenderConfig(_Strict):
    """Sequential recommenders, their variants and training."""

    models: list[RecModel] = Field(["sasrec", "gru4rec"], description="Backbones to train.")
    variants: list[RecVariant] = Field(["id", "item_text"], description="Feature variants.")
    text_matching: bool = Field(
        False, description="Also train the ID-agnostic text matcher on rationale vectors."
    )
    rationales: list[Literal["student", "teacher", "history"]] = Field(
        ["student"],
        description="Rationale sources for the user_text variants and text matching, one run "
        "each: student (SLIM: the distilled student's rationale for every user), teacher "
        "(the teacher's own rationales, for the sampled users only: the paper's LLM-enhancer "
        "baseline without distillation) and history (a control without an LLM: at each of the "
        "student's (user, cutoff) pairs, the mean text vector of the history items its prompt "
        "showed; needs item text vectors). Ignored when user_vectors is set.",
    )
    text_matching_parts: list[Literal["full", "step1", "step2", "step3"]] = Field(
        ["full"],
        min_length=1,
        description="Text matching on the full rationale and/or one step alone (the paper's "
        "Table 2); the student source gets every part listed, the teacher source the full one.",
    )
    popularity: bool = Field(True, description="Report the most-popular-items baseline.")
    zero_vector_control: bool = Field(
        False,
        description="Also train each user_text variant with a zero vector for every user (rows "
        "'+zeros'): the fusion layer without any rationale, a control that separates what the "
        "layer does by itself from what the rationales add.",
    )
    user_vectors: Path | None = Field(
        None,
        description="Your own Parquet of (user_idx, cutoff, vector) for the user_text variants "
        "instead of the pipeline's rationales (every evaluated user and cutoff needs one).",
    )
    dim: int = Field(64, ge=8, description="ID embedding / hidden size.")
    layers: int = Field(2, ge=1, description="SASRec transformer layers.")
    heads: int = Field(2, ge=1, description="SASRec attention heads.")
    inner_dim: int = Field(256, ge=8, description="SASRec feed-forward size.")
    gru_hidden: int = Field(128, ge=8, description="GRU4Rec hidden size.")
    gru_layers: int = Field(1, ge=1, description="GRU4Rec GRU layers (RecBole's `num_layers`).")
    gnn_steps: int = Field(1, ge=1, description="SRGNN graph layers (RecBole's `step`).")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout rate.")
    max_len: int = Field(50, ge=2, description="Longest history a model reads.")
    loss: Literal["ce", "bce"] = Field(
        "ce", description="Full softmax cross-entropy, or BCE with sampled negatives (the paper)."
    )
    bce_negatives: int = Field(1, ge=1, description="Sampled negatives per positive for BCE.")
    logits_memory_mb: int = Field(
        256,
        ge=1,
        description="Most MiB of logits a CE step holds: above it, the softmax runs a chunk of "
        "positions at a time (the same loss and gradients, one more matmul). Catalogues of "
        "~10k items and fewer never reach it at batch 64.",
    )
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(
        0.0,
        ge=0,
        description="Adam weight decay. With loss: bce, above 0 it keeps the item table on dense "
        "Adam (every row updated every step) instead of SparseAdam on the rows a step reads.",
    )
    batch_size: int = Field(
        64,
        ge=1,
        description="Training windows per batch. Small data sets need the optimizer steps: "
        "at 256 an ml-100k epoch is 8 steps and early stopping ends training before it learns.",
    )
    prefix_batch_size: int = Field(
        512,
        ge=1,
        description="Rows per batch for a model that trains on every prefix as its own row "
        "(SRGNN): each row holds one target, where a window holds one at every position.",
    )
    max_epochs: int = Field(200, ge=1, description="Upper bound on training epochs.")
    patience: int = Field(
        10,
        ge=1,
        description="Stop after this many evaluations without a better validation NDCG@10.",
    )
    seeds: list[int] = Field([42], min_length=1, description="One training run per seed.")
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
        description="Where the recommenders train: auto (a CUDA GPU when torch sees one, else "
        "the CPU), cpu, cuda, cuda:N or mps.",
    )
    threads: int | None = Field(
        None, ge=1, description="Torch CPU threads per run (default: the CPUs / workers)."
    )
    workers: int = Field(
        1,
        ge=1,
        description="Training runs of `slim run` / `slim train` side by side, each in its own "
        "process. On small data a run uses a second thread poorly: on 2 cores, 2 workers of 1 "
        "thread finish the demo's runs ~1.3x sooner than 1 of 2; on ml-100k, no sooner "
        "(docs/benchmarks.md, 'Recommender runs in worker processes').",
    )

    def result_settings(self, exclude: set[str] = frozenset()) -> dict[str, Any]:
        """The settings that change results (stage and study keys hash these): not where or
        how fast runs train, nor the logits' memory bound, nor the user vector file (hashed by
        its content instead)."""
        run_only = {"user_vectors", "threads", "workers", "device", "logits_memory_mb"}
        return self.model_dump(mode="json", exclude=run_only | exclude)


class TrackingConfig(_Strict):
    """Experiment tracking with MLflow (optional: `pip install -e '.[mlflow]'`)."""

    mlflow: bool = Field(
        False,
        description="Log each pipeline or train run to MLflow: the resolved settings as params, "
        "every recommender run's per-epoch loss and validation NDCG@10 and its test metrics, and "
        "the results, report and plots as artifacts; the student's fine-tuning (TRL) reports to "
        "the same experiment.",
    )
    uri: str | None = Field(
        None,
        description="MLflow tracking URI; default a SQLite store in the run folder "
        "(sqlite:///<output_dir>/mlflow.db, artifacts in <output_dir>/mlflow-artifacts).",
    )
    experiment: str | None = Field(None, description="MLflow experiment; default run.name.")


class EvalConfig(_Strict):
    """Evaluation protocols; both are always reported side by side."""

    ks: list[int] = Field([10, 20], min_length=1, description="Cutoffs for NDCG@k and Hit@k.")
    sampled_negatives: int = Field(
        100, ge=1, description="Negatives per target in the sampled protocol (the paper: 100)."
    )
    exclude_history: bool = Field(
        True, description="Full ranking: drop the user's earlier items from the candidates."
    )
    negative_seed: int = Field(2024, description="Seed of the saved negative samples.")
    # 128: the fastest batches measured were 40-200 MiB (10k-800k items, SASRec, one thread);
    # larger ones ran up to 1.5x slower per user (cache), smaller ones paid per-call overhead.
    score_memory_mb: int = Field(
        128,
        ge=1,
        description="Memory for one batch of full-ranking scores: users are scored this many "
        "MiB at a time (16 bytes per user and item: 8 users at 1M items, 838 at 10k), never "
        "all at once. Changes no metric.",
    )

    def result_settings(self) -> dict[str, Any]:
        """The settings that change results (stage keys hash these): not the memory bound."""
        return self.model_dump(mode="json", exclude={"score_memory_mb"})

    def users_per_batch(self, n_items: int) -> int:
        """Users scored at once under `score_memory_mb`: the model's scores and their copies,
        the candidate mask and the comparison took 14-16 bytes a user and item (SASRec)."""
        return max(1, self.score_memory_mb * 2**20 // (16 * (n_items + 1)))


def uses_item_vectors(cfg: RecommenderConfig) -> bool:
    return cfg.text_matching or any(VARIANTS[v].item_text for v in cfg.variants)


def uses_user_vectors(cfg: RecommenderConfig) -> bool:
    return cfg.text_matching or any(VARIANTS[v].user_text for v in cfg.variants)


class TeacherConfig(_Strict):
    """The teacher LLM: an OpenAI-compatible endpoint or a local transformers model."""

    backend: Literal["transformers", "openai"] = Field(
        "transformers",
        description="openai: any OpenAI-compatible HTTP endpoint (OpenAI, vLLM's or "
        "llama.cpp's server); transformers: a local model folder, in process.",
    )
    model: str = Field(
        description="Model name at the endpoint; or, for transformers, a local model folder or a "
        "shipped model name (`slim models list`, e.g. qwen2.5-coder-0.5b-instruct)."
    )
    gguf_file: str | None = Field(None, description="GGUF file inside the model folder.")
    prompt_version: Literal["teacher-v2", "teacher-v3"] = Field(
        "teacher-v2",
        description="The teacher prompt: teacher-v2 is the paper's three steps; teacher-v3 asks "
        "step 3 for items that are not in the history (small teachers otherwise recommend what "
        "the user already has). Answers are cached per version.",
    )
    base_url: str | None = Field(None, description="Endpoint, e.g. https://api.openai.com/v1.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key (never logged)."
    )
    api_key_block: str | None = Field(
        None,
        description="Name of a Prefect Secret block holding the API key; used instead of "
        "api_key_env when set (never logged).",
    )
    users: int = Field(
        200, ge=1, description="Users sampled for rationales, stratified by history length."
    )
    cutoffs: list[Literal["train", "valid", "test"]] = Field(
        ["train", "valid"],
        min_length=1,
        description="Targets the rationales precede (history before them only): train is each "
        "user's last training item, valid and test the evaluation targets. One prompt per user "
        "and cutoff. The '+teacher' variants need train (the recommenders learn to read the "
        "rationales there) and valid or test (they are evaluated with them).",
    )
    train_cutoff_lead: TrainCutoffLead = 0
    max_history_items: int = Field(20, ge=1, description="Most recent items shown in a prompt.")
    token_budget: int | None = Field(600, ge=1, description="Words of history a prompt may hold.")
    batch_size: int = Field(
        32,
        ge=1,
        description="Prompts per batch (one Prefect task, one cache file); for HTTP a few times "
        "max_concurrency, so that the batch keeps every request slot busy.",
    )
    max_concurrency: int = Field(8, ge=1, description="Requests in flight at once (HTTP).")
    dtype: Literal["float32", "bfloat16", "auto"] = Field(
        "float32",
        description="Weights of a local model (transformers): bfloat16 is faster on CPUs with "
        "AVX512-BF16 / AMX and on GPUs, much slower on other CPUs; auto picks it only where "
        "the hardware has it.",
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout (HTTP).")
    max_retries: int = Field(4, ge=0, description="Retries on 429 / 5xx / timeouts (HTTP).")
    malformed_retries: int = Field(
        2, ge=0, description="Re-asks of answers without the three steps."
    )
    max_tokens: int = Field(256, ge=1, description="Longest answer.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature (0: greedy).")
    samples: int = Field(
        1,
        ge=1,
        le=16,
        description="Answers drawn per prompt (needs temperature > 0). The first is the "
        "teacher's rationale everywhere; the others only feed `student.select: best_of_k`.",
    )
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    repetition_penalty: float = Field(
        1.0,
        ge=1.0,
        description="> 1 stops small local models looping on one line; over HTTP only for "
        "servers that accept it (vLLM, llama.cpp), not OpenAI.",
    )
    step_tokens: int | None = Field(
        None,
        ge=4,
        description="Most tokens per step while a local (transformers) teacher answers, as "
        "student.step_tokens: a step that runs past this is closed and the next step's header "
        "written, so a small teacher that lists genres until max_tokens still reaches step 3 "
        "(None: free generation; endpoints over HTTP do not take it).",
    )
    price_input_per_1k: float = Field(0.0, ge=0, description="USD per 1,000 prompt tokens.")
    price_output_per_1k: float = Field(0.0, ge=0, description="USD per 1,000 answer tokens.")
    budget_usd: float | None = Field(
        None,
        gt=0,
        description="Stop cleanly before the spend of every run through this teacher's answer "
        "cache would pass this (`slim teacher reset-budget` counts from zero again).",
    )

    @model_validator(mode="after")
    def _steps_fit(self) -> TeacherConfig:
        check_step_budget(self.step_tokens, self.max_tokens, self.backend)
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(
                f"teacher.samples {self.samples} with temperature 0: greedy decoding gives the "
                "same answer every time; set teacher.temperature (e.g. 0.7) or samples: 1"
            )
        return self


# SLIM's fine-tuning defaults, under `student.sft` / `student.lora` (TRL's and PEFT's own
# defaults suit a GPU and a larger model: lr 2e-5, gradient checkpointing on, saves every 500).
SFT_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2e-4,
    "num_train_epochs": 3.0,
    "per_device_train_batch_size": 4,
    "max_length": 768,
    "save_steps": 20,
    "gradient_checkpointing": False,
}
LORA_DEFAULTS: dict[str, Any] = {
    "r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "target_modules": ["q_proj", "v_proj"],
}
SFT_OWNED = frozenset({"output_dir", "completion_only_loss", "report_to", "seed"})
LORA_OWNED = frozenset({"task_type"})
# Flat student keys of earlier versions and where they live now.
LEGACY_SFT_KEYS = {
    "learning_rate": "learning_rate",
    "epochs": "num_train_epochs",
    "max_steps": "max_steps",
    "batch_size": "per_device_train_batch_size",
    "max_length": "max_length",
    "save_steps": "save_steps",
    "gradient_checkpointing": "gradient_checkpointing",
}
LEGACY_LORA_KEYS = {
    "lora_r": "r",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "lora_targets": "target_modules",
}


class StudentConfig(_Strict):
    """The student LLM: LoRA fine-tuning on teacher rationales, then a rationale for every user."""

    base_model: str = Field(
        description="A local transformers folder or a shipped model name (`slim models list`)."
    )
    gguf_file: str | None = Field(None, description="GGUF file inside base_model's folder.")
    # Fine-tuning: TRL's SFTTrainer with a PEFT LoRA adapter, loss on the rationale tokens only.
    sft: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings for TRL's SFTConfig, passed as they are and validated by it (e.g. "
        "learning_rate, num_train_epochs, max_steps, per_device_train_batch_size, max_length, "
        "weight_decay, lr_scheduler_type, save_steps, gradient_checkpointing), over SLIM's "
        f"defaults {SFT_DEFAULTS}. SLIM sets {sorted(SFT_OWNED)} itself.",
    )
    lora: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings for PEFT's LoraConfig, passed as they are and validated by it (r, "
        f"lora_alpha, lora_dropout, target_modules, ...), over SLIM's defaults {LORA_DEFAULTS}. "
        "task_type is CAUSAL_LM.",
    )
    heldout_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of teacher pairs (by user) held out for evaluation."
    )
    step_words: int | None = Field(
        None,
        ge=1,
        description="Cut each teacher step to its first N words for the student to learn, so a "
        "small student writes all three steps within max_tokens and then stops (None: whole "
        "steps). Quality is measured against the same cut rationales.",
    )
    plain_steps: bool = Field(
        False,
        description="Learn each teacher step as one plain line: markdown marks, list bullets "
        "and line breaks removed before the cut to step_words. A small teacher's headings and "
        "lists otherwise teach the student to spend its max_tokens before step 3.",
    )
    min_pairs: int = Field(8, ge=1, description="Fewest teacher pairs worth training on.")
    select: Literal["none", "top_fraction", "best_of_k"] = Field(
        "none",
        description="Which teacher answers at training cutoffs the student learns from, by how "
        "well their text ranks the item that came next, zero-shot (cosine to the item texts, "
        "history excluded). top_fraction: the best `select_fraction` of them; best_of_k: of "
        "the teacher.samples answers to each prompt, the best one. Answers at other cutoffs "
        "and held-out pairs are never chosen this way: their next item is an evaluation target.",
    )
    select_fraction: float = Field(
        0.5, gt=0, le=1, description="With select: top_fraction, the share of answers kept."
    )
    # Inference for every user.
    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers: batched on CPU/GPU; vllm: offline engine."
    )
    cutoffs: list[Literal["train", "valid", "test"]] = Field(
        ["train", "valid", "test"],
        min_length=1,
        description="Rationales for these targets' histories. The recommenders train on the "
        "train-cutoff rationales and are evaluated with the valid / test ones.",
    )
    train_cutoff_lead: TrainCutoffLead = 0
    max_history_items: int = Field(20, ge=1, description="Most recent items in a prompt.")
    token_budget: int | None = Field(600, ge=1, description="Words of history a prompt may hold.")
    users: int | None = Field(None, ge=1, description="Only the first N users (None: all).")
    shard_users: int = Field(64, ge=1, description="Users per shard (one Parquet file each).")
    inference_batch_size: int = Field(8, ge=1, description="Prompts per generate() call.")
    dtype: Literal["float32", "bfloat16", "auto"] = Field(
        "float32",
        description="Weights for inference and quality scoring with transformers: bfloat16 is "
        "faster on CPUs with AVX512-BF16 / AMX and on GPUs, much slower on other CPUs; auto "
        "picks it only where the hardware has it. Fine-tuning keeps float32 weights and uses "
        "bfloat16 mixed precision only where the hardware has it.",
    )
    max_tokens: int = Field(192, ge=1, description="Longest rationale.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature (0: greedy).")
    repetition_penalty: float = Field(1.0, ge=1.0, description="> 1 discourages loops.")
    step_tokens: int | None = Field(
        None,
        ge=4,
        description="Most tokens per rationale step while generating (transformers backend): "
        "the answer starts with 'Step 1:', a step that runs past this is closed by writing the "
        "next step's header, and the answer cannot end before step 3. Keeps a small student "
        "that loops inside one step from never reaching step 3. Three steps and their headers "
        "must fit max_tokens (None: free generation).",
    )
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM GPU memory share.")
    max_model_len: int = Field(2048, ge=64, description="vLLM context length.")
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="vLLM: GPUs one student is split across (for a model larger than one GPU). "
        "For throughput, run one shard per GPU instead (docs/operations.md).",
    )

    @field_validator("sft", "lora", mode="before")
    @classmethod
    def _typed_values(cls, values: Any) -> Any:
        """Values from SLIM_STUDENT__SFT__* or --set arrive as text: read them as YAML, as the
        configuration file would have given them (`2` a number, `[a, b]` a list)."""
        if not isinstance(values, dict):
            return values
        return {k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in values.items()}

    @model_validator(mode="before")
    @classmethod
    def _legacy_trainer_keys(cls, values: Any) -> Any:
        """The flat keys of earlier versions (lora_r, epochs, ...) move into `sft` / `lora`."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        for renames, section in ((LEGACY_SFT_KEYS, "sft"), (LEGACY_LORA_KEYS, "lora")):
            moved = {old: values.pop(old) for old in list(renames) if old in values}
            if not moved:
                continue
            nested = dict(values.get(section) or {})
            for old, value in moved.items():
                new = renames[old]
                if new in nested:
                    raise ValueError(f"student.{old} and student.{section}.{new} are both set")
                if value is not None:  # max_steps: null meant TRL's default
                    nested[new] = value
            values[section] = nested
            logging.getLogger("slim_core.config").warning(
                "student: %s are deprecated; write them as student.%s: {%s}",
                ", ".join(moved),
                section,
                ", ".join(f"{renames[old]}: ..." for old in moved),
            )
        return values

    @model_validator(mode="after")
    def _steps_fit(self) -> StudentConfig:
        check_step_budget(self.step_tokens, self.max_tokens, self.backend)
        owned = sorted(SFT_OWNED & set(self.sft)) + sorted(LORA_OWNED & set(self.lora))
        if owned:
            raise ValueError(
                f"student.sft / student.lora: {owned} are set by SLIM (the run folder, the "
                "rationale-only loss, tracking, run.seed, a causal LM); remove them"
            )
        return self

    @property
    def sft_settings(self) -> dict[str, Any]:
        """What TRL's SFTConfig gets from the configuration: SLIM's defaults under `sft`."""
        return {**SFT_DEFAULTS, **self.sft}

    @property
    def lora_settings(self) -> dict[str, Any]:
        """What PEFT's LoraConfig gets from the configuration: SLIM's defaults under `lora`."""
        return {**LORA_DEFAULTS, **self.lora}


class SearchRange(_Strict):
    """One searched setting: a range (`low`, `high`, optionally `log`) or a list of `choices`."""

    low: float | None = None
    high: float | None = None
    log: bool = Field(False, description="Sample the range on a log scale (learning rates).")
    choices: list[float] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> SearchRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high (or give choices)")
        if self.low > self.high:
            raise ValueError(f"inverted range: low {self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


# The default search; a setting a backbone does not read (IGNORED_BY) is left out of its search,
# which would spend trials on noise (GRU4Rec's search once "chose" `layers: 2`, never read).
SEARCH = {
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "dropout": {"low": 0.0, "high": 0.6},
    "dim": {"choices": [32, 64, 128]},
    "layers": {"low": 1, "high": 3},
    "gru_layers": {"low": 1, "high": 3},
    "gnn_steps": {"low": 1, "high": 3},
    "batch_size": {"choices": [32, 64, 128, 256]},
    "weight_decay": {"choices": [0.0, 1e-6, 1e-5, 1e-4]},
    "max_len": {"choices": [20, 50]},
}
TUNABLE = tuple(SEARCH)
IGNORED_BY = {
    "sasrec": {"gru_layers", "gnn_steps"},
    "gru4rec": {"layers", "gnn_steps"},
    "srgnn": {"layers", "gru_layers", "dropout"},
}


def default_space(model: str) -> dict[str, SearchRange]:
    """The search over every tunable setting that `model` reads."""
    ignored = IGNORED_BY.get(model, set())
    return {name: SearchRange(**rng) for name, rng in SEARCH.items() if name not in ignored}


class TuneConfig(_Strict):
    """`slim tune`: Optuna's TPE search over recommender settings, on the validation split."""

    model: RecModel = Field("sasrec", description="Backbone to tune.")
    variant: Literal["id", "item_text"] = Field("id", description="Feature variant to tune.")
    trials: int = Field(20, ge=1, description="Finished trials the study should reach.")
    seed: int = Field(1, description="Seed of the sampler and of every trial's training.")
    pruning_warmup_epochs: int = Field(
        5, ge=0, description="Epochs every trial runs before the median pruner may stop it."
    )
    space: dict[str, SearchRange] = Field(
        default_factory=dict,
        description=f"Settings to search, each a range or choices; any of {', '.join(TUNABLE)} "
        "that the backbone reads. Default: all of those.",
    )

    @model_validator(mode="before")
    @classmethod
    def _space_of_the_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and "space" not in data:
            model = data.get("model", cls.model_fields["model"].default)
            data = {**data, "space": default_space(model)}
        return data

    @field_validator("space")
    @classmethod
    def _known_settings(
        cls, space: dict[str, SearchRange], info: ValidationInfo
    ) -> dict[str, SearchRange]:
        if not space:
            raise ValueError(
                f"the search space is empty: give at least one of {', '.join(TUNABLE)}"
            )
        unknown = sorted(set(space) - set(TUNABLE))
        if unknown:
            raise ValueError(
                f"cannot search {', '.join(unknown)}: searchable are {', '.join(TUNABLE)}"
            )
        model = info.data.get("model")  # absent when the model itself is invalid
        ignored = sorted(set(space) & IGNORED_BY.get(model, set()))
        if ignored:
            raise ValueError(
                f"{model} does not read {', '.join(ignored)}: searchable for it are "
                f"{', '.join(default_space(model))}"
            )
        return space


class _YamlEnvSettings(EnvSettingsSource):
    """`SLIM_*` overrides written as in the YAML file: `[gru4rec, sasrec]` as well as JSON."""

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        try:
            return json.loads(value)
        except ValueError:
            pass
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as error:
            names = [k for k, v in os.environ.items() if k.startswith("SLIM_") and v == value]
            raise ConfigError(
                f"{names[0] if names else field_name}: not valid YAML or JSON ({value!r}): "
                f"{str(error).splitlines()[0]}"
            ) from None


class SlimConfig(BaseSettings):
    """The whole pipeline's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="SLIM_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    run: RunConfig = RunConfig()
    data: DataConfig
    encoder: EncoderConfig = EncoderConfig()
    recommender: RecommenderConfig = RecommenderConfig()
    evaluation: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    teacher: TeacherConfig | None = None
    student: StudentConfig | None = None
    # None, not TuneConfig(): settings merge a given section into a default instance, and a
    # search space given in the file must replace the default space, not extend it.
    tune: TuneConfig | None = None

    @property
    def tuning(self) -> TuneConfig:
        """The `tune` section, or the default search when the file has none."""
        return self.tune or TuneConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: it overrides the values read from the YAML file.
        return (_YamlEnvSettings(settings_cls), init_settings)

    @model_validator(mode="after")
    def _rationales_reach_training(self) -> SlimConfig:
        # A training target reads only a rationale written before it; the last one is the train
        # cutoff's. Without that cutoff a source's vectors reach evaluation but never training,
        # and its rows would measure an untrained input: refuse before any LLM call is paid.
        rec = self.recommender
        if rec.user_vectors is not None or not uses_user_vectors(rec):
            return self
        if "history" in rec.rationales and self.student is None:
            raise ValueError(
                "recommender.rationales has 'history', the mean history text at the student's "
                "(user, cutoff) pairs, but there is no student section to take them from"
            )
        for source in rec.rationales:
            # history vectors sit at the student's pairs: the student's train cutoff covers them
            section = "teacher" if source == "teacher" else "student"
            stage = getattr(self, section)
            if stage is not None and "train" not in stage.cutoffs:
                raise ValueError(
                    f"recommender.rationales has {source!r} but {section}.cutoffs "
                    f"{stage.cutoffs} has no 'train': no training target could read a {source} "
                    "vector (a target reads only vectors written before it), so its variants "
                    f"would measure nothing. Add 'train' to {section}.cutoffs (one more prompt "
                    f"per user), or remove {source!r} from recommender.rationales"
                )
        return self

    @model_validator(mode="after")
    def _selection_needs_train_answers(self) -> SlimConfig:
        # Selection looks at the item after each answer's cutoff: only a training cutoff's is
        # allowed to be seen, so without one there is nothing to select from.
        student, teacher = self.student, self.teacher
        selects = student is not None and student.select != "none"
        if selects and (teacher is None or "train" not in teacher.cutoffs):
            raise ValueError(
                f"student.select {student.select!r} ranks teacher answers by the item after "
                "their cutoff, which only a training cutoff may look at: add 'train' to "
                "teacher.cutoffs, or set student.select: none"
            )
        if selects and student.select == "best_of_k" and teacher.samples < 2:
            raise ValueError(
                "student.select 'best_of_k' picks among several answers to each prompt: set "
                "teacher.samples to 2 or more (with a temperature above 0)"
            )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_validation_error(error: ValidationError, origin: str) -> str:
    lines = [f"{origin}: invalid configuration ({error.error_count()} problem(s)):"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        got = item.get("input")
        shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
        lines.append(f"  - {where}: {item['msg']}{shown}")
    env = sorted(name for name in os.environ if name.startswith("SLIM_"))
    if env:
        lines.append(f"  environment overrides in effect: {', '.join(env)}")
    return "\n".join(lines)


def config_from_dict(values: dict[str, Any], origin: str = "configuration") -> SlimConfig:
    """Validate a configuration mapping (environment overrides apply)."""
    try:
        return SlimConfig(**values)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, origin)) from None


def load_config(path: str | os.PathLike[str]) -> SlimConfig:
    """Read, override from the environment, and validate a YAML configuration file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (run, data, ...) at the top")
    return config_from_dict(values, origin=str(path))
