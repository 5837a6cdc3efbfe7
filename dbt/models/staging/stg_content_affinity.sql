with

source as (

    select * from {{ source('features', 'content_affinity') }}

),

renamed as (

    select
        cast(person_id as varchar) as person_id,
        cast(category as varchar) as category,
        cast(affinity as double) as affinity_share,
        cast(events as bigint) as category_events,
        cast(is_top as boolean) as is_top_category,
        cast(top_category as varchar) as top_category,
        {{ utc_timestamp('as_of') }} as as_of

    from source

)

select * from renamed
