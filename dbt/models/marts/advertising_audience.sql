with

user_segments as (

    select * from {{ ref('user_segments') }}

),

purpose_eligibility as (

    select * from {{ ref('stg_purpose_eligibility') }}

),

-- fail closed: a person is in only if every sale_share row says eligible (a missing row, a null or any
-- false keeps the person out)
sale_share_eligible as (

    select person_id
    from purpose_eligibility
    where purpose = 'sale_share'
    group by person_id
    having min(case when is_eligible then 1 else 0 end) = 1

),

final as (

    select
        cast(user_segments.person_id as varchar) as person_id,
        cast(user_segments.rfm_segment as varchar) as rfm_segment,
        cast(user_segments.top_category as varchar) as top_category,
        cast(user_segments.as_of as timestamp) as as_of
    from user_segments
    inner join sale_share_eligible
        on user_segments.person_id = sale_share_eligible.person_id

)

select * from final
