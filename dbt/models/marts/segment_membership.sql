with

user_segments as (

    select * from {{ ref('user_segments') }}

),

content_affinity as (

    select * from {{ ref('stg_content_affinity') }}

),

rfm_memberships as (

    select
        person_id,
        'rfm' as segment_type,
        'rfm:' || rfm_segment as segment_name,
        as_of
    from user_segments

),

lifecycle_memberships as (

    select
        person_id,
        'lifecycle' as segment_type,
        'lifecycle:' || lifecycle_stage as segment_name,
        as_of
    from user_segments

),

-- only known users (the ones in user_segments) get affinity segments
affinity_memberships as (

    select
        user_segments.person_id,
        'affinity' as segment_type,
        'affinity:' || content_affinity.category as segment_name,
        user_segments.as_of
    from user_segments
    inner join content_affinity
        on user_segments.person_id = content_affinity.person_id
    where content_affinity.affinity_share >= cast({{ var('affinity_segment_min_share') }} as double)

),

memberships as (

    select * from rfm_memberships
    union all
    select * from lifecycle_memberships
    union all
    select * from affinity_memberships

),

final as (

    select
        cast(person_id as varchar) as person_id,
        cast(segment_type as varchar) as segment_type,
        cast(segment_name as varchar) as segment_name,
        cast(as_of as timestamp) as as_of
    from memberships

)

select * from final
