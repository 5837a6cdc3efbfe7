with

source as (

    select * from {{ source('features', 'sessions') }}

),

renamed as (

    select
        cast(session_id as varchar) as session_id,
        cast(person_id as varchar) as person_id,
        {{ utc_timestamp('session_start') }} as started_at,
        {{ utc_timestamp('session_end') }} as ended_at,
        cast(events as bigint) as events,
        cast(pages as bigint) as pages,
        cast(dwell_ms as bigint) as dwell_ms,
        cast(landing_content_id as varchar) as landing_content_id,
        cast(converted as boolean) as is_converted,
        {{ utc_timestamp('as_of') }} as as_of

    from source

)

select * from renamed
