"""Connected components of the identity graph, in DuckDB (no per-edge Python).

Min-label propagation with pointer jumping: every node starts with its own integer id as label; each
round a node takes the smallest label among itself and its neighbours, then the label of that label
("jumping" halves path lengths, so a chain of length d converges in O(log d) rounds instead of d).
Labels only decrease and always name a node of the same component, so the fixpoint labels every
component with its smallest node id. Each round is two hash joins over the edge list, which DuckDB
runs in parallel and spills to disk like any other query.
"""

from __future__ import annotations

MAX_ROUNDS = 200


def label_components(con, edges_table: str, out_table: str, max_rounds: int = MAX_ROUNDS) -> int:
    """Label the nodes of `edges_table` (integer columns u, v; undirected) into `out_table`(node, label).

    Only nodes that have at least one edge appear in the output (an isolated node is its own
    component). Returns the number of propagation rounds.
    """
    con.execute(
        f"""
        create or replace temp table __cc_dir as
        select u as a, v as b from {edges_table}
        union all
        select v as a, u as b from {edges_table}
        """
    )
    # round 0: every node with an edge, labelled with the smallest of itself and its neighbours
    con.execute(
        f"""
        create or replace temp table {out_table} as
        select a as node, least(a, min(b)) as label from __cc_dir group by a
        """
    )
    rounds = 0
    while True:
        rounds += 1
        if rounds > max_rounds:
            raise RuntimeError(f"identity components did not converge in {max_rounds} rounds")
        con.execute(
            f"""
            create or replace temp table __cc_next as
            with neighbour_min as (
                select d.a as node, min(l.label) as label
                from __cc_dir as d
                join {out_table} as l on l.node = d.b
                group by d.a
            ),
            hooked as (
                select l.node, least(l.label, n.label) as label
                from {out_table} as l
                join neighbour_min as n using (node)
            )
            select h.node, least(h.label, p.label) as label
            from hooked as h
            join hooked as p on p.node = h.label
            """
        )
        changed = con.execute(
            f"""
            select count(*) from __cc_next as n join {out_table} as l using (node)
            where n.label <> l.label
            """
        ).fetchall()[0][0]
        con.execute(f"create or replace temp table {out_table} as select * from __cc_next")
        if changed == 0:
            break
    con.execute("drop table if exists __cc_next")
    con.execute("drop table if exists __cc_dir")
    return rounds
