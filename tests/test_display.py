"""The terminal table shows values as they are: rich must not eat lyric section tags as markup."""

import pyarrow as pa
from songmill.flows.display import print_table


def test_table_keeps_bracketed_section_tags(capsys):
    table = pa.table({"lyrics_tagged": ["[verse]\nhello", "[instrumental]"], "[odd]": [1, 2]})
    print_table(table, "table")
    out = capsys.readouterr().out
    assert "[verse]" in out and "[instrumental]" in out and "[odd]" in out
    assert "(2 rows)" in out
