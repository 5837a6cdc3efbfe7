{#
    value_quintile(order_by): the quintile, 1..5, of a row's value among all rows, in the order `order_by` (worst
    first). A row scores the quintile in which the first row with the same value falls: rank() gives equal values
    the same rank, so equal values always share a score and no tie is broken by anything but the value (ntile()
    would split a tie by whatever else orders it, e.g. the person pseudonym, which changes with the key).
    Plain window functions and arithmetic: the same on DuckDB and Snowflake.
#}
{% macro value_quintile(order_by) -%}
    cast(1 + floor(5.0 * (rank() over (order by {{ order_by }}) - 1) / count(*) over ()) as integer)
{%- endmacro %}
