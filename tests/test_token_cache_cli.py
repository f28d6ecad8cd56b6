"""A corrupt token cache through the real CLI: one line says it is rebuilt, and the run trains."""

from tests.conftest import TINY_RUN, run_cli

from tinytransformer.data import tiny_world


def test_a_corrupt_token_cache_is_rebuilt_with_one_line_and_the_run_trains(tmp_path):
    text = tmp_path / "corpus.txt"
    corpus = tiny_world.generate_text(20000, seed=0)
    text.write_text(corpus)
    args = [
        *TINY_RUN,
        "trainer.max_steps=10",
        "trainer.val_check_interval=10",
        "trainer.checkpoint_every_n_steps=10",
        "callbacks.sample_generation.every_n_steps=10",
        "test=false",
        "data=text_file",
        f"data.path={text}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    first = run_cli("train.py", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    (tokens_file,) = (tmp_path / "cache" / "tokens").glob("*/tokens-*.bin")
    ids = bytearray(tokens_file.read_bytes())
    ids[::50] = bytes([255]) * len(ids[::50])  # ids outside the vocabulary: an IndexError a few steps in
    tokens_file.write_bytes(ids)
    second = run_cli("train.py", *args)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-2000:]
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if "rebuilding" in line]
    problem = f"id 255, outside the vocabulary of {len(set(corpus))}"
    assert line == f"token cache {tokens_file} is corrupt ({problem}); rebuilding it"
