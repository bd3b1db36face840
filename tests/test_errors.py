import errno

from synthir.errors import DataError, friendly_errors


def test_friendly_errors_print_one_line_and_return_1(capsys):
    @friendly_errors
    def bad_data() -> None:
        raise DataError("corpus.jsonl:3: malformed JSON")

    @friendly_errors
    def disk_full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "metrics/eval.json")

    @friendly_errors
    def fine() -> int:
        return 0

    assert bad_data() == 1 and capsys.readouterr().err == "error: corpus.jsonl:3: malformed JSON\n"
    assert disk_full() == 1 and capsys.readouterr().err == "error: metrics/eval.json: No space left on device\n"
    assert fine() == 0 and capsys.readouterr().err == ""
