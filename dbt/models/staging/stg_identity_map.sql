with

source as (

    select * from {{ source('features', 'identity_map') }}

),

renamed as (

    select
        cast(identifier as varchar) as identifier,
        cast(identifier_kind as varchar) as identifier_kind,
        cast(person_id as varchar) as person_id,
        cast(component_size as bigint) as component_size,
        cast(is_junk as boolean) as is_junk,
        {{ utc_timestamp('as_of') }} as as_of

    from source

)

select * from renamed
