{#
    Privacy invariant on the real data (the unit test covers the logic): nobody in the audience lacks a
    true sale_share eligibility, or has any non-true one. Reported in Dagster as a check on advertising_audience.
#}
{{ config(meta={'dagster': {'ref': {'name': 'advertising_audience'}}}) }}

with

audience as (

    select * from {{ ref('advertising_audience') }}

),

sale_share as (

    select * from {{ ref('stg_purpose_eligibility') }}
    where purpose = 'sale_share'

),

not_eligible as (

    select audience.person_id
    from audience
    left join sale_share
        on audience.person_id = sale_share.person_id
    group by audience.person_id
    having min(case when sale_share.is_eligible then 1 else 0 end) = 0

)

select * from not_eligible
