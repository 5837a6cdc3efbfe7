with

source as (

    select * from {{ source('features', 'engagement') }}

),

renamed as (

    select
        cast(person_id as varchar) as person_id,
        cast(active_days as bigint) as active_days,
        cast(sessions_per_week as double) as sessions_per_week,
        cast(avg_session_dwell_ms as double) as avg_session_dwell_ms,
        cast(preferred_hour as bigint) as preferred_hour_utc,
        cast(preferred_dow as bigint) as preferred_day_of_week,
        {{ utc_timestamp('as_of') }} as as_of

    from source

)

select * from renamed
