{#
    Use a model's custom schema as is (`staging`, `segments`) instead of dbt's default
    `<target schema>_<custom schema>`: the warehouse then has the same schemas in DuckDB and Snowflake,
    and the Dagster asset keys can mirror them.
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
