{#
    Where DuckDB (local) and Snowflake (prod) differ. Models call these macros instead of adapter-specific
    SQL, so one set of model SQL runs on both targets.
#}

{#
    utc_timestamp(column): a timezone-naive timestamp holding UTC wall-clock time.
    - DuckDB reads the lake Parquet, whose timestamps are TIMESTAMP WITH TIME ZONE (UTC); naive inputs are
      taken as UTC (the profile sets the session TimeZone to UTC).
    - Snowflake: the loader (personalization_assets/warehouse/loader.py) stores feature timestamps as
      TIMESTAMP_NTZ in UTC, so a cast is enough.
#}
{% macro utc_timestamp(column) -%}
    {{ return(adapter.dispatch('utc_timestamp')(column)) }}
{%- endmacro %}

{% macro default__utc_timestamp(column) -%}
    cast({{ column }} as timestamp)
{%- endmacro %}

{% macro duckdb__utc_timestamp(column) -%}
    timezone('UTC', cast({{ column }} as timestamptz))
{%- endmacro %}

{% macro snowflake__utc_timestamp(column) -%}
    cast({{ column }} as timestamp_ntz)
{%- endmacro %}


{#
    elapsed_days(start, end): elapsed time between two timestamps in days, as a double
    (elapsed seconds / 86400, not a count of calendar-day boundaries).
#}
{% macro elapsed_days(start_column, end_column) -%}
    {{ return(adapter.dispatch('elapsed_days')(start_column, end_column)) }}
{%- endmacro %}

{% macro default__elapsed_days(start_column, end_column) -%}
    cast(datediff(second, {{ start_column }}, {{ end_column }}) as double) / 86400.0
{%- endmacro %}

{% macro duckdb__elapsed_days(start_column, end_column) -%}
    cast(date_diff('second', {{ start_column }}, {{ end_column }}) as double) / 86400.0
{%- endmacro %}

{% macro snowflake__elapsed_days(start_column, end_column) -%}
    cast(datediff(second, {{ start_column }}, {{ end_column }}) as double) / 86400.0
{%- endmacro %}
