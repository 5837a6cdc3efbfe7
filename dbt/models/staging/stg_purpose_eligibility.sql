with

source as (

    select * from {{ source('features', 'purpose_eligibility') }}

),

renamed as (

    select
        cast(person_id as varchar) as person_id,
        cast(purpose as varchar) as purpose,
        cast(eligible as boolean) as is_eligible,
        {{ utc_timestamp('as_of') }} as as_of

    from source

)

select * from renamed
