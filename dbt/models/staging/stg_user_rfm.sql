with

source as (

    select * from {{ source('features', 'user_rfm') }}

),

renamed as (

    select
        cast(person_id as varchar) as person_id,
        cast(recency_days as double) as recency_days,
        cast(frequency as bigint) as frequency,
        cast(monetary as double) as monetary,
        cast(orders as bigint) as orders,
        {{ utc_timestamp('first_seen_at') }} as first_seen_at,
        {{ utc_timestamp('last_seen_at') }} as last_seen_at,
        cast(is_known_user as boolean) as is_known_user,
        {{ utc_timestamp('as_of') }} as as_of

    from source

)

select * from renamed
