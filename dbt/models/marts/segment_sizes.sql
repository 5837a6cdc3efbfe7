with

segment_membership as (

    select * from {{ ref('segment_membership') }}

),

sizes as (

    select
        segment_type,
        segment_name,
        count(*) as members,
        max(as_of) as as_of
    from segment_membership
    group by segment_type, segment_name

),

final as (

    select
        cast(segment_type as varchar) as segment_type,
        cast(segment_name as varchar) as segment_name,
        cast(members as bigint) as members,
        cast(as_of as timestamp) as as_of
    from sizes

)

select * from final
