with

rfm as (

    select * from {{ ref('stg_user_rfm') }}

),

content_affinity as (

    select * from {{ ref('stg_content_affinity') }}

),

known_users as (

    select
        person_id,
        recency_days,
        frequency,
        monetary,
        first_seen_at,
        last_seen_at,
        as_of
    from rfm
    where is_known_user

),

top_categories as (

    select
        person_id,
        min(top_category) as top_category
    from content_affinity
    group by person_id

),

-- quintiles by value, 5 = best, nulls ranked worst; equal values share a score (macros/scoring.sql): no tie is
-- broken by person_id, so the scores do not depend on the pseudonymization key (the same with every machine's
-- development key, and unchanged by a key rotation). Recency in whole days ties most users who came back today,
-- so within a day it ranks by the exact time last seen
scored as (

    select
        person_id,
        recency_days,
        first_seen_at,
        as_of,
        {{ value_quintile('recency_days desc nulls first, last_seen_at asc nulls first') }} as r_score,
        {{ value_quintile('frequency asc nulls first') }} as f_score,
        {{ value_quintile('monetary asc nulls first') }} as m_score
    from known_users

),

-- the rules are documented in user_segments.yml; the first matching rule wins
named as (

    select
        person_id,
        r_score,
        f_score,
        m_score,
        case
            when r_score >= 4 and f_score >= 4 and m_score >= 4 then 'champions'
            when r_score >= 3 and f_score >= 4 then 'loyal'
            when r_score >= 4 and f_score <= 2 then 'new'
            when r_score >= 3 then 'potential_loyalist'
            when f_score >= 3 or m_score >= 3 then 'at_risk'
            else 'hibernating'
        end as rfm_segment,
        case
            when {{ elapsed_days('first_seen_at', 'as_of') }} <= {{ var('lifecycle_new_max_days') }}
                then 'new'
            when recency_days <= {{ var('lifecycle_active_max_recency_days') }} then 'active'
            when recency_days <= {{ var('lifecycle_lapsing_max_recency_days') }} then 'lapsing'
            else 'dormant'
        end as lifecycle_stage,
        as_of
    from scored

),

final as (

    select
        cast(named.person_id as varchar) as person_id,
        cast(named.r_score as integer) as r_score,
        cast(named.f_score as integer) as f_score,
        cast(named.m_score as integer) as m_score,
        cast(named.rfm_segment as varchar) as rfm_segment,
        cast(top_categories.top_category as varchar) as top_category,
        cast(named.lifecycle_stage as varchar) as lifecycle_stage,
        cast(named.as_of as timestamp) as as_of
    from named
    left join top_categories
        on named.person_id = top_categories.person_id

)

select * from final
