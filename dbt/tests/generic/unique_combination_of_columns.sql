{#
    Fails for every combination of the given columns that occurs more than once
    (the project has no package dependencies, so this stands in for dbt_utils' test of the same name).
#}
{% test unique_combination_of_columns(model, combination_of_columns) %}

with

duplicates as (

    select
        {{ combination_of_columns | join(', ') }},
        count(*) as occurrences
    from {{ model }}
    group by {{ combination_of_columns | join(', ') }}
    having count(*) > 1

)

select * from duplicates

{% endtest %}
