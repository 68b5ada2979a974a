from training.cli import COMMANDS


def test_cli_table_names_every_contract_command():
    assert {"build-bank", "train", "sample"} <= set(COMMANDS)
