{# Fails for every row whose value lies outside [min_value, max_value]; either bound may be omitted
   (nulls are not_null's business). #}
{% test accepted_range(model, column_name, min_value=none, max_value=none) %}

with

out_of_range as (

    select {{ column_name }} as value
    from {{ model }}
    where false
        {%- if min_value is not none %}
        or {{ column_name }} < {{ min_value }}
        {%- endif %}
        {%- if max_value is not none %}
        or {{ column_name }} > {{ max_value }}
        {%- endif %}

)

select * from out_of_range

{% endtest %}
