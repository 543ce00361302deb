# ac_embed_migrations(<target> <prefix> <dir>)
# Embeds the numbered SQL files NNN_name.sql of <dir> into a generated C file that
# defines `const ac_migration_t <prefix>_migrations[]` (terminated by {0, NULL, NULL}).
function(ac_embed_migrations target prefix dir)
  file(GLOB sql_files CONFIGURE_DEPENDS ${dir}/*.sql)
  list(SORT sql_files)
  set(out ${CMAKE_CURRENT_BINARY_DIR}/${prefix}_migrations.c)
  add_custom_command(
    OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -DPREFIX=${prefix} -DOUT=${out} "-DFILES=${sql_files}"
            -P ${CMAKE_SOURCE_DIR}/cmake/embed_migrations_run.cmake
    DEPENDS ${sql_files} ${CMAKE_SOURCE_DIR}/cmake/embed_migrations_run.cmake
    COMMENT "Embedding ${prefix} migrations" VERBATIM)
  target_sources(${target} PRIVATE ${out})
endfunction()
